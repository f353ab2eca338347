//! The redis-rs sync integration against the emulator: a real redis-server behind the proxy
//! that refuses bad tokens and closes connections whose token expired

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis::ConnectionLike;
use redis_entraid_blocking::redis_sync::{EntraClient, EntraConnection, EntraConnectionManager};
use redis_entraid_blocking::{Provider, Startup};
use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::event::{Event, Generation};
use redis_entraid_core::identity::imds::Imds;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::token::{AccessToken, TokenResponse};
use redis_entraid_emulator::{BlockingEmulator, Emulator, TokenSpec};

fn emulator(lifetime: Duration) -> BlockingEmulator {
    Emulator::start_blocking(Emulator::builder().token_lifetime(lifetime))
        .expect("the emulator starts (is redis-server installed? .ci/install-redis.sh)")
}

/// Tokens rotate only when a test asks (`refresh_now`), at most every 50 ms
fn config() -> Config {
    Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .ratio(0.5)
                .lower_bound(Duration::from_secs(1))
                .min_interval(Duration::from_millis(50))
                .build()
                .unwrap(),
        )
        .retry(
            RetryPolicy::builder()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(400))
                .build()
                .unwrap(),
        )
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A provider handing out one-hour tokens signed by `emu`: call `n` returns token
/// `min(n, last)`, so calls past the last one get the same (cached) token again
fn provider_with_tokens(emu: &Emulator, count: usize) -> Provider {
    let oid = emu.default_oid().to_owned();
    // Each token lives one second longer than the one before, so the provider takes it as newer.
    let tokens: Vec<String> = (0..count as u64)
        .map(|n| emu.mint_token(&TokenSpec::for_oid(&oid).lifetime(Duration::from_secs(3600 + n))))
        .collect();
    let calls = AtomicUsize::new(0);
    Provider::builder()
        .config(config())
        .startup(Startup::Wait(Duration::from_secs(5)))
        .build_with_fetcher(move |_timeout: Duration| {
            let n = calls.fetch_add(1, Ordering::SeqCst).min(tokens.len() - 1);
            Ok(TokenResponse::new(AccessToken::new(tokens[n].clone())))
        })
        .unwrap()
}

/// Rotates to the next token and returns its generation
fn rotate(provider: &Provider) -> Generation {
    let before = provider.current().map(|(g, _)| g);
    provider.refresh_now();
    provider
        .wait_newer(before, Duration::from_secs(5))
        .expect("a newer token within 5 s")
        .0
}

/// Polls `ready` every 5 ms until it holds or `within` passes; how long it took
fn wait_for(within: Duration, mut ready: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if ready() {
            return Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(5));
    }
    ready().then(|| started.elapsed())
}

fn set_get(conn: &mut dyn ConnectionLike, key: &str, value: u64) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(conn)
        .unwrap();
    let got: u64 = redis::cmd("GET").arg(key).query(conn).unwrap();
    assert_eq!(got, value);
}

#[test]
fn resp3_connections_authenticate_and_reauthenticate() {
    let emu = emulator(Duration::from_secs(3600));
    let provider = provider_with_tokens(&emu, 8);
    let url = format!(
        "redis://{}/?protocol=resp3",
        emu.redis_addr().expect("proxy address")
    );
    let client = EntraClient::new(redis::Client::open(url).unwrap(), provider.clone());
    let mut conn = client
        .get_connection()
        .expect("RESP3 connects: HELLO 3 carries AUTH");
    let pool = r2d2::Pool::builder()
        .max_size(2)
        .min_idle(Some(2))
        .build(EntraConnectionManager::new(client.clone()))
        .expect("the pool connects over RESP3");
    set_get(&mut conn, "resp3:plain", 1);
    set_get(&mut *pool.get().unwrap(), "resp3:pool", 1);
    // RESP3 replies: a map from HELLO, not a flat array.
    let hello: redis::Value = redis::cmd("HELLO").arg(3).query(&mut conn).unwrap();
    assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");

    let generation = rotate(&provider);
    // Idle connections, the pooled ones included, re-authenticate on RESP3 too.
    let all_fresh = || {
        let connections = client.connections();
        connections.len() == 3
            && connections
                .iter()
                .all(|c| c.open && c.generation == Some(generation))
    };
    assert!(
        wait_for(Duration::from_secs(3), all_fresh).is_some(),
        "{:?}",
        client.connections()
    );
    set_get(&mut conn, "resp3:plain", 2);
    set_get(&mut *pool.get().unwrap(), "resp3:pool", 2);
    let counters = emu.counters();
    assert_eq!(counters.redis_auth_failed, 0);
    assert!(counters.redis_auth_ok >= 6, "{counters:?}");
    // The rotation's fan-out is reported (and so measured by the `metrics` feature): the three
    // connections re-authenticated, none retried, first AUTHs not counted.
    let reports = provider.fan_out_reports();
    let report = reports
        .iter()
        .find(|r| r.generation == generation)
        .expect("the rotation is reported");
    assert_eq!(report.connections, 3, "{reports:?}");
    assert_eq!(report.failed_attempts, 0, "{reports:?}");
    assert!(report.max < Duration::from_secs(3), "{reports:?}");
}

/// A TCP forwarder to the emulator's proxy whose connections can be frozen one by one: a
/// frozen connection swallows what the client sends, so Redis never answers it
struct Forwarder {
    addr: SocketAddr,
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Forwarder {
    fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = Arc::clone(&frozen);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    return;
                };
                let flag = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(Arc::clone(&flag));
                let (client_in, server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pipe(client_in, server_out, Some(&flag)));
                thread::spawn(move || pipe(server, client, None));
            }
        });
        Self { addr, frozen }
    }

    fn freeze(&self, connection: usize) {
        self.frozen.lock().unwrap()[connection].store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, frozen: Option<&AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.is_some_and(|f| f.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn one_stuck_connection_never_delays_the_reauthentication_of_the_others() {
    const AUTH_TIMEOUT: Duration = Duration::from_secs(3);
    let emu = emulator(Duration::from_secs(3600));
    let provider = provider_with_tokens(&emu, 8);
    let forwarder = Forwarder::start(emu.redis_addr().unwrap());
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", forwarder.addr)).unwrap(),
        provider.clone(),
    )
    .auth_timeout(AUTH_TIMEOUT);
    // The stuck connection is the first one the re-authenticator meets.
    let mut stuck = client.get_connection().unwrap();
    let mut healthy: Vec<EntraConnection> =
        (0..3).map(|_| client.get_connection().unwrap()).collect();
    set_get(&mut stuck, "stuck", 1);
    for (i, conn) in healthy.iter_mut().enumerate() {
        set_get(conn, &format!("healthy:{i}"), 1);
    }
    forwarder.freeze(0);

    let generation = rotate(&provider);
    let arrived = Instant::now();
    // A healthy connection re-authenticates in milliseconds (a few ms measured, through the
    // forwarder and the proxy). Requiring it within 2 s, less than the stuck connection's
    // 3 s AUTH timeout, fails if any healthy one waited for the stuck one, even for a bounded
    // time, and leaves a 2 s margin for a loaded machine.
    let took = wait_for(Duration::from_secs(2), || {
        healthy.iter().all(|c| c.generation() == Some(generation))
    });
    assert!(
        took.is_some(),
        "healthy connections stayed behind the stuck one: {:?}",
        client.connections()
    );
    eprintln!(
        "healthy connections re-authenticated {:?} after the token arrived",
        took.unwrap()
    );
    assert_eq!(stuck.generation().map(|g| g.0), Some(1));

    // The stuck one is closed once its AUTH times out, not waited on forever.
    let closed = wait_for(AUTH_TIMEOUT + Duration::from_secs(3), || {
        !stuck.status().open
    });
    assert!(closed.is_some(), "{:?}", stuck.status());
    let closed_after = arrived.elapsed();
    eprintln!("the stuck connection was closed {closed_after:?} after the token arrived");
    assert!(closed_after >= AUTH_TIMEOUT - Duration::from_millis(100));
    // Its next command reconnects (the forwarder's new connection is not frozen).
    set_get(&mut stuck, "stuck", 2);
    assert_eq!(stuck.generation(), Some(generation));
    for (i, conn) in healthy.iter_mut().enumerate() {
        set_get(conn, &format!("healthy:{i}"), 2);
    }
    assert!(
        provider
            .events()
            .try_iter()
            .all(|e| !matches!(e, Event::Stopped)),
        "the provider keeps running"
    );
}

#[test]
fn a_refused_reauth_is_retried_until_it_succeeds() {
    let emu = emulator(Duration::from_secs(3600));
    // Two tokens: every fetch after the second returns the second again, as a cached token
    // would, so only a retry of the same token can succeed.
    let provider = provider_with_tokens(&emu, 2);
    let events = provider.events();
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
        provider.clone(),
    );
    let mut conns: Vec<EntraConnection> =
        (0..3).map(|_| client.get_connection().unwrap()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        set_get(conn, &format!("refused:{i}"), 1);
    }
    emu.refuse_next_auths(4);
    let generation = rotate(&provider);
    // Idle connections only: no command helps. Backoff 50, 100, 200, 400 ms... four refusals
    // shared by three connections end within about 1 s; 10 s is far beyond that.
    let took = wait_for(Duration::from_secs(10), || {
        conns.iter().all(|c| c.generation() == Some(generation))
    });
    assert!(
        took.is_some(),
        "refused re-AUTHs were not retried: {:?}, {} refusals left",
        client.connections(),
        emu.auths_to_refuse()
    );
    eprintln!(
        "every connection re-authenticated {:?} after the token arrived, through 4 refusals",
        took.unwrap()
    );
    assert_eq!(emu.auths_to_refuse(), 0);
    assert!(conns.iter().all(|c| c.status().open));
    for (i, conn) in conns.iter_mut().enumerate() {
        set_get(conn, &format!("refused:{i}"), 2);
    }
    let failed = events
        .try_iter()
        .filter(|e| matches!(e, Event::ReauthFailed { .. }))
        .count();
    assert!(failed >= 1, "refusals are reported");
    let counters = emu.counters();
    assert_eq!(counters.redis_auth_failed, 4);
    assert_eq!(counters.redis_closed_for_expiry, 0);
    assert_eq!(
        counters.redis_connections_accepted, 3,
        "no connection was replaced"
    );
}

#[test]
fn refused_connect_and_command_auths_are_retried() {
    let emu = emulator(Duration::from_secs(3600));
    // Each refusal makes the provider fetch a fresh token: enough tokens that a rotation is
    // always newer (the retry of one same token is covered by the idle test above).
    let provider = provider_with_tokens(&emu, 20);
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
        provider.clone(),
    );
    let mut conn = client.get_connection().unwrap();
    // Refusals for new connections are retried as well.
    emu.refuse_next_auths(2);
    let mut second = client
        .get_connection()
        .expect("a refused connect is retried");
    set_get(&mut second, "connect-refused", 1);
    emu.refuse_next_auths(3);
    rotate(&provider);
    // Whoever meets the refusals (this command or the idle re-authenticator), the command
    // succeeds.
    set_get(&mut conn, "command-refused", 1);
    assert!(
        wait_for(Duration::from_secs(10), || emu.auths_to_refuse() == 0).is_some(),
        "{} refusals left",
        emu.auths_to_refuse()
    );
    set_get(&mut second, "connect-refused", 2);
    assert_eq!(emu.counters().redis_closed_for_expiry, 0);
}

#[test]
fn user_timeouts_are_restored_after_a_reauth() {
    let emu = emulator(Duration::from_secs(3600));
    let provider = provider_with_tokens(&emu, 8);
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
        provider.clone(),
    )
    .auth_timeout(Duration::from_secs(30));
    let mut conn = client.get_connection().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let generation = rotate(&provider);
    assert!(wait_for(Duration::from_secs(3), || conn.generation()
        == Some(generation))
    .is_some());
    // BLPOP for 5 s: the user's 300 ms read timeout, not the 30 s AUTH timeout, ends it.
    let started = Instant::now();
    let err = redis::cmd("BLPOP")
        .arg("nothing-here")
        .arg(5)
        .query::<Option<(String, String)>>(&mut conn)
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// IMDS on the emulator, with short tokens
fn imds_provider(emu: &Emulator) -> Provider {
    let identity = Imds::new(ManagedIdentityId::SystemAssigned)
        .with_pod_identity_host(&emu.imds_endpoint())
        .unwrap();
    Provider::builder()
        .config(config())
        .startup(Startup::Wait(Duration::from_secs(5)))
        .build(TokenSource::ManagedIdentity(ManagedIdentity::Imds(
            identity,
        )))
        .unwrap()
}

#[test]
fn a_blocking_command_that_outlives_its_token_fails_and_the_connection_reconnects() {
    // Four-second tokens: each connection's token expires while its BLPOP waits.
    let lifetime = Duration::from_secs(4);
    let emu = emulator(lifetime);
    let provider = imds_provider(&emu);
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
        provider.clone(),
    );
    let pool = r2d2::Pool::builder()
        .max_size(1)
        .build(EntraConnectionManager::new(client.clone()))
        .unwrap();
    let mut conn = client.get_connection().unwrap();
    let (tx, rx) = mpsc::channel();
    let blocked = {
        let tx = tx.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let result = redis::cmd("BLPOP")
                .arg("never")
                .arg(0)
                .query::<Option<(String, String)>>(&mut conn);
            tx.send(("plain", started.elapsed(), result.map(drop)))
                .unwrap();
            conn
        })
    };
    let pooled = {
        let pool = pool.clone();
        thread::spawn(move || {
            let mut conn = pool.get().unwrap();
            let started = Instant::now();
            let result = redis::cmd("BLPOP")
                .arg("never")
                .arg(0)
                .query::<Option<(String, String)>>(&mut *conn);
            tx.send(("pooled", started.elapsed(), result.map(drop)))
                .unwrap();
        })
    };
    // The server closes each at its token's expiry, at most `lifetime` after it connected;
    // 5 s more covers a loaded machine, and a hang fails the test instead of blocking it.
    for _ in 0..2 {
        let (kind, after, result) = rx
            .recv_timeout(lifetime + Duration::from_secs(5))
            .expect("the blocked command returns once its token expired");
        let err = result.expect_err("the server closed the connection");
        eprintln!("{kind}: BLPOP 0 failed after {after:?}: {err}");
        assert!(
            err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error(),
            "{kind}: an I/O error, got {err:?}"
        );
        assert!(
            after <= lifetime + Duration::from_secs(1),
            "{kind}: {after:?}"
        );
    }
    let mut conn = blocked.join().unwrap();
    pooled.join().unwrap();
    assert!(emu.counters().redis_closed_for_expiry >= 2);
    // The same EntraConnection reconnects with the current token; the pool replaces its own
    // (r2d2 may already have, in the background).
    let accepted = emu.counters().redis_connections_accepted;
    set_get(&mut conn, "after-blpop", 1);
    assert!(emu.counters().redis_connections_accepted > accepted);
    assert_eq!(conn.generation(), provider.current().map(|(g, _)| g));
    set_get(&mut *pool.get().unwrap(), "after-blpop-pool", 1);
    assert_eq!(
        emu.counters().redis_connections_accepted,
        4,
        "2 first connections, 2 replacements"
    );
}
