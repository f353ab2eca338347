//! A rotation over many connections keeps the re-`AUTH`s in flight under the process-wide
//! bound (`MAX_REAUTHS_IN_FLIGHT`), yet concurrent. The stand-in server is a measuring
//! instrument (it answers every `AUTH` after 20 ms and counts how many it is answering at
//! once), not a Redis double: what it checks is how many we send at once.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_entraid_core::config::{Config, RefreshPolicy};
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use redis_entraid_tokio::redis_async::{EntraClient, MAX_REAUTHS_IN_FLIGHT};
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

/// A Redis stand-in that answers `+OK` to everything, each `AUTH` after 20 ms, and
/// records how many `AUTH`s it was answering at once
async fn slow_auth_server(gauge: Arc<AuthGauge>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let gauge = gauge.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(socket);
                while let Some(cmd) = read_command(&mut r).await {
                    if cmd.first().is_some_and(|c| c.eq_ignore_ascii_case(b"AUTH")) {
                        let now = gauge.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        gauge.max.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_over_many_connections_keeps_the_re_auths_in_flight_bounded() {
    let gauge = Arc::new(AuthGauge::default());
    let addr = slow_auth_server(gauge.clone()).await;
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
    const CONNECTIONS: usize = 200;
    let mut cons = Vec::new();
    for _ in 0..CONNECTIONS {
        cons.push(client.get_multiplexed_connection().await.unwrap());
    }
    // Connecting authenticated each connection once, one at a time; count the rotation only.
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
    while recorded() < CONNECTIONS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {CONNECTIONS} re-AUTHs answered ({} recorded)",
            gauge.done.load(Ordering::SeqCst),
            recorded()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let max = gauge.max.load(Ordering::SeqCst);
    // Bounded, yet still concurrent: the fan-out is not serialised.
    assert!(
        max <= MAX_REAUTHS_IN_FLIGHT,
        "{max} AUTHs in flight at once"
    );
    assert!(max > 1, "the re-AUTHs ran one at a time");
    let report = provider.fan_out_reports().pop().unwrap();
    assert_eq!(report.connections, CONNECTIONS);
    assert_eq!(report.failed_attempts, 0);
    drop(cons);
}
