//! A network between the clients and Redis: a TCP relay that holds every byte for a fixed
//! one-way delay in each direction, in order, so a round trip costs `rtt` more than on
//! loopback. Azure Managed Redis is in another machine, often another zone: a fan-out that
//! only looks good at loopback's 30 µs round trips is not measured by `--rtt-ms 0`.
//!
//! Precision matters more than it seems: a delay-based window (ours) reads jitter as
//! queueing. A tokio timer rounds every delay up to its next 1 ms tick, so a 2 ms round trip
//! came out anywhere from 2 to 4 ms, far noisier than a data centre's network. Here tokio
//! only reads; one "wire" thread writes each chunk when it is due, sleeping with the OS
//! timer (tens of microseconds late at most). All chunks wait the same delay, so the order
//! they were read in is the order they fall due: the wire is one FIFO, no heap.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A chunk on the wire: when it is due, where it goes (no bytes: the sender closed)
struct InFlight {
    due: Instant,
    to: Arc<std::net::TcpStream>,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Wire {
    queue: Mutex<VecDeque<InFlight>>,
    ready: Condvar,
}

impl Wire {
    fn push(&self, chunk: InFlight) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(chunk);
            self.ready.notify_one();
        }
    }

    /// Writes every chunk when it falls due, forever
    fn run(&self) {
        loop {
            let Some(chunk) = self.next() else { return };
            let wait = chunk.due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if chunk.bytes.is_empty() {
                let _ = chunk.to.shutdown(std::net::Shutdown::Write);
            } else {
                write_all(&chunk.to, &chunk.bytes);
            }
        }
    }

    fn next(&self) -> Option<InFlight> {
        let mut q = self.queue.lock().ok()?;
        loop {
            if let Some(chunk) = q.pop_front() {
                return Some(chunk);
            }
            q = self.ready.wait(q).ok()?;
        }
    }
}

/// The sockets are non-blocking (tokio reads them too); a full send buffer is waited out.
fn write_all(mut to: &std::net::TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match to.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Starts a relay to `upstream` adding `rtt` to every round trip; returns its address.
///
/// # Errors
/// When the relay's threads, runtime or listening socket cannot be made.
pub fn start_relay(upstream: SocketAddr, rtt: Duration) -> Result<SocketAddr, String> {
    let one_way = rtt / 2;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    let wire = Arc::new(Wire::default());
    {
        let wire = wire.clone();
        std::thread::Builder::new()
            .name("rtt-wire".into())
            .spawn(move || wire.run())
            .map_err(|e| e.to_string())?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("rtt-relay".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    eprintln!("rtt relay: cannot listen");
                    return;
                };
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let wire = wire.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (Ok(client), Ok(server)) = (split(client), split(server)) else {
                            return;
                        };
                        tokio::spawn(carry(client.0, server.1.clone(), one_way, wire.clone()));
                        tokio::spawn(carry(server.0, client.1.clone(), one_way, wire));
                    });
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}

/// A socket as tokio's reading end and a blocking-API writing end (the same socket)
fn split(s: TcpStream) -> std::io::Result<(TcpStream, Arc<std::net::TcpStream>)> {
    let std = s.into_std()?;
    let writer = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, Arc::new(writer)))
}

/// Reads `from` and puts each chunk on the wire, due `delay` after it was read
async fn carry(
    mut from: TcpStream,
    to: Arc<std::net::TcpStream>,
    delay: Duration,
    wire: Arc<Wire>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => wire.push(InFlight {
                due: Instant::now() + delay,
                to: to.clone(),
                bytes: buf[..n].to_vec(),
            }),
        }
    }
    // The end of the stream travels the wire too, behind the bytes read before it.
    wire.push(InFlight {
        due: Instant::now() + delay,
        to,
        bytes: Vec::new(),
    });
}
