//! A rotation over many connections keeps the re-`AUTH`s in flight within the process-wide
//! window: near its minimum (`MIN_REAUTHS_IN_FLIGHT`) when they queue at the server, growing
//! past it when the round trip is long but nothing queues (most `AUTH`s in flight are then on
//! the wire). The stand-in servers are measuring instruments (they count the `AUTH`s they hold
//! at once), not Redis doubles: what they check is how many we send at once.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_entraid_core::config::{Config, RefreshPolicy};
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use redis_entraid_tokio::redis_async::{
    reauth_window, EntraClient, MAX_REAUTHS_IN_FLIGHT, MIN_REAUTHS_IN_FLIGHT,
};
use redis_entraid_tokio::Provider;

#[derive(Default)]
struct AuthGauge {
    in_flight: AtomicUsize,
    max: AtomicUsize,
    done: AtomicUsize,
}

/// One RESP array command, or `None` at end of stream
async fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; len + 2];
        r.read_exact(&mut arg).await.ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

/// How the stand-in server spends an `AUTH`'s time
#[derive(Clone, Copy)]
enum AuthCost {
    /// Each `AUTH` is answered `delay` after it arrived, all in parallel: a long network path
    /// in front of a server with room to spare
    Path(Duration),
    /// One `AUTH` at a time, each taking `service`: a server with a queue
    Queue(Duration),
}

/// A Redis stand-in that answers `+OK` to everything, each `AUTH` at the given cost, and
/// records how many `AUTH`s it held (received, not yet answered) at once
async fn auth_server(gauge: Arc<AuthGauge>, cost: AuthCost) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_thread = Arc::new(Mutex::new(()));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let gauge = gauge.clone();
            let server_thread = server_thread.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(socket);
                while let Some(cmd) = read_command(&mut r).await {
                    if cmd.first().is_some_and(|c| c.eq_ignore_ascii_case(b"AUTH")) {
                        let now = gauge.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        gauge.max.fetch_max(now, Ordering::SeqCst);
                        match cost {
                            AuthCost::Path(delay) => tokio::time::sleep(delay).await,
                            AuthCost::Queue(service) => {
                                let _serving = server_thread.lock().await;
                                tokio::time::sleep(service).await;
                            }
                        }
                        gauge.in_flight.fetch_sub(1, Ordering::SeqCst);
                        gauge.done.fetch_add(1, Ordering::SeqCst);
                    }
                    if r.get_mut().write_all(b"+OK\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Opens `connections` connections to a stand-in server with `cost`, rotates once, and
/// returns the most `AUTH`s the server held at once during the rotation
async fn rotate(connections: usize, cost: AuthCost) -> usize {
    let gauge = Arc::new(AuthGauge::default());
    let addr = auth_server(gauge.clone(), cost).await;
    let n = Arc::new(AtomicUsize::new(0));
    let config = Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .min_interval(Duration::from_millis(1))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let provider = Provider::builder()
        .config(config)
        .build_with_fetcher(move |_timeout: Duration| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            async move {
                let exp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + 3600;
                let token = unsigned_token(&format!(r#"{{"oid":"oid","exp":{exp},"n":{i}}}"#));
                Ok(TokenResponse::new(token).with_expires_in(3600))
            }
        })
        .await
        .unwrap();
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{addr}")).unwrap(),
        provider.clone(),
    );
    // Each connect's own AUTH pays the server's cost too: 50 at a time (500 one after the
    // other over a 50 ms path would take 25 s; all at once, some would wait past redis-rs's
    // connection timeout).
    let mut cons = Vec::new();
    while cons.len() < connections {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..(connections - cons.len()).min(50) {
            let client = client.clone();
            opening.spawn(async move { client.get_multiplexed_connection().await.unwrap() });
        }
        cons.extend(opening.join_all().await);
    }
    // Connecting authenticated each connection once; count the rotation only.
    gauge.max.store(0, Ordering::SeqCst);
    gauge.done.store(0, Ordering::SeqCst);
    provider.refresh_now();
    // Done when every connection has recorded its OK (after reading the server's answer, so
    // the server's own count can run ahead of it).
    let recorded = || {
        provider
            .fan_out_reports()
            .last()
            .map_or(0, |report| report.connections)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while recorded() < connections {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {connections} re-AUTHs answered ({} recorded)",
            gauge.done.load(Ordering::SeqCst),
            recorded()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = provider.fan_out_reports().pop().unwrap();
    assert_eq!(report.connections, connections);
    assert_eq!(report.failed_attempts, 0);
    drop(cons);
    gauge.max.load(Ordering::SeqCst)
}

// Both behaviours in one test: the window is process-wide, so two tests in one process
// would feed each other's round trips into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_re_auth_window_holds_at_a_queueing_server_and_grows_over_a_long_path() {
    // A queueing server: each AUTH takes 1 ms of its one thread. Everything the window lets
    // out waits there, so the window stays at its minimum (32 measured on an idle machine),
    // yet the AUTHs are concurrent, not one at a time. The queue estimate is short by one
    // AUTH per millisecond the burst's fastest answer was delayed in our own process (it
    // sets the base round trip), and the window grows while the estimate is under half the
    // minimum: twice the minimum leaves 48 ms for that delay on a loaded machine.
    let held = rotate(200, AuthCost::Queue(Duration::from_millis(1))).await;
    eprintln!("queueing server: at most {held} AUTHs held at once");
    assert!(
        held <= 2 * MIN_REAUTHS_IN_FLIGHT,
        "{held} AUTHs held at once by a queueing server"
    );
    assert!(held > 1, "the re-AUTHs ran one at a time");

    // A 50 ms path with nothing queued: what is in flight is on the wire, so the window
    // grows past its minimum (doubling each round trip) instead of pacing 500 AUTHs 32 at a
    // time. (With 64 in flight, scheduling delays under 16 ms per answer still read as less
    // than the 16 queued AUTHs that stop the growth.)
    let held = rotate(500, AuthCost::Path(Duration::from_millis(50))).await;
    eprintln!("long path: at most {held} AUTHs in flight at once");
    assert!(
        held > 2 * MIN_REAUTHS_IN_FLIGHT,
        "only {held} AUTHs in flight at once over a long path with no queue"
    );
    assert!(held <= MAX_REAUTHS_IN_FLIGHT);
    // The burst is over: the next one starts from the minimum and learns its own path.
    assert_eq!(reauth_window(), MIN_REAUTHS_IN_FLIGHT);
}
