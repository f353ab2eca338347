//! A hostile identity endpoint: answers every request in one abusive way, to check that a
//! client's memory, threads and deadlines stay bounded
//!
//! Plain `http` on loopback, one short-lived thread per connection; every connection thread
//! ends soon after the client goes away (a failed write, or the read timeout).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the endpoint misbehaves
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hostility {
    /// `200 OK` and this many body bytes, with no `Content-Length` (the body ends when the
    /// connection closes), so a client can only find out by counting
    HugeBody {
        /// Body length in bytes
        bytes: u64,
    },
    /// `200 OK` announcing `Content-Length: 4096`, then one body byte per `every`
    SlowDrip {
        /// Time between two body bytes
        every: Duration,
    },
    /// Reads the request and never answers
    Silent,
}

/// A running hostile endpoint; stops accepting when dropped
#[derive(Debug)]
pub struct HostileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
}

impl HostileServer {
    /// Starts one on an ephemeral loopback port
    ///
    /// # Errors
    /// The I/O error when the port cannot be bound or the accept thread cannot start.
    pub fn start(hostility: Hostility) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (stop2, requests2) = (Arc::clone(&stop), Arc::clone(&requests));
        std::thread::Builder::new()
            .name("hostile-accept".to_owned())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    requests2.fetch_add(1, Ordering::Relaxed);
                    let _ = std::thread::Builder::new()
                        .name("hostile-conn".to_owned())
                        .spawn(move || serve(stream, hostility));
                }
            })?;
        Ok(Self {
            addr,
            stop,
            requests,
        })
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, hostility: Hostility) {
    // Read the request head (enough to let the client finish sending), never longer than 5 s.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match hostility {
        Hostility::HugeBody { bytes } => {
            let header =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
            if stream.write_all(header.as_bytes()).is_err() {
                return;
            }
            let chunk = [b'a'; 64 * 1024];
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..n]).is_err() {
                    return;
                }
                sent += n as u64;
            }
        }
        Hostility::SlowDrip { every } => {
            let header =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n";
            if stream.write_all(header.as_bytes()).is_err() {
                return;
            }
            for _ in 0..4096 {
                std::thread::sleep(every);
                if stream.write_all(b" ").is_err() {
                    return;
                }
            }
        }
        Hostility::Silent => {
            // Wait for the client to hang up (or the read timeout).
            let _ = stream.read(&mut buf);
        }
    }
}
