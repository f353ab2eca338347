//! End to end on the blocking runtime: real sockets, real identity HTTP, a real redis-server
//! behind the emulator's proxy, which closes every connection whose token expires
//!
//! Six-second tokens, 42 seconds per scenario, every identity flow at once; then the same with
//! identity faults that clear before the current token expires.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::ConnectionLike;
use redis_entraid_blocking::redis_sync::{EntraClient, EntraConnection, EntraConnectionManager};
use redis_entraid_blocking::{HttpConfig, Provider, Startup, StartupError};
use redis_entraid_core::event::Event;
use redis_entraid_core::identity::imds::Imds;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource;
use redis_entraid_emulator::{
    BlockingEmulator, ClientCertificate, Emulator, Endpoint, Fault, FaultKind,
};
use redis_entraid_tests::{e2e_config, flows, Flow, Report, SCENARIO_DURATION, TOKEN_LIFETIME};

const PLAIN_WORKERS: usize = 3;
const POOL_WORKERS: usize = 2;
const POOL_SIZE: u32 = 5;
const IDLE_CONNECTIONS: usize = 2;

fn start_emulator(tag: &str) -> (BlockingEmulator, PathBuf) {
    let certificate = ClientCertificate::generate("redis-entraid-e2e").expect("test certificate");
    let emu = Emulator::start_blocking(
        Emulator::builder()
            .token_lifetime(TOKEN_LIFETIME)
            .client_certificate(certificate.certificate_pem()),
    )
    .expect("the emulator starts (is redis-server installed? .ci/install-redis.sh)");
    let pem = std::env::temp_dir().join(format!(
        "redis-entraid-e2e-{tag}-{}.pem",
        std::process::id()
    ));
    std::fs::write(&pem, certificate.pem()).unwrap();
    (emu, pem)
}

fn http(emu: &Emulator) -> HttpConfig {
    HttpConfig::default()
        .add_root_ca(emu.ca_cert_path())
        .ignore_ssl_cert_file()
}

fn redis_url(emu: &Emulator) -> String {
    format!("redis://{}", emu.redis_addr().expect("proxy address"))
}

/// Runs one flow for `duration` with plain, pooled and idle connections; counts everything
fn run_flow(flow: Flow, emu: &Emulator, duration: Duration) -> Report {
    let provider = Provider::builder()
        .config(e2e_config())
        .http(http(emu))
        .startup(Startup::Wait(Duration::from_secs(15)))
        .build(flow.source)
        .unwrap_or_else(|e| panic!("{}: {e}", flow.name));
    let events = provider.events();
    let client = EntraClient::new(
        redis::Client::open(redis_url(emu)).unwrap(),
        provider.clone(),
    );
    let pool = r2d2::Pool::builder()
        .max_size(POOL_SIZE)
        .min_idle(Some(POOL_SIZE))
        .build(EntraConnectionManager::new(client.clone()))
        .unwrap();
    let commands = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let record = {
        let (commands, failures) = (Arc::clone(&commands), Arc::clone(&failures));
        let name = flow.name;
        move |result: redis::RedisResult<()>| match result {
            Ok(()) => {
                commands.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("{name}: command failed: {e}");
                }
            }
        }
    };
    let set_get = |conn: &mut dyn ConnectionLike, key: &str, i: u64| -> redis::RedisResult<()> {
        redis::cmd("SET").arg(key).arg(i).query::<()>(conn)?;
        let got: u64 = redis::cmd("GET").arg(key).query(conn)?;
        assert_eq!(got, i, "replies stay in order");
        Ok(())
    };
    let mut threads = Vec::new();
    for w in 0..PLAIN_WORKERS {
        let (client, stop, record) = (client.clone(), Arc::clone(&stop), record.clone());
        let key = format!("{}:plain:{w}", flow.name);
        threads.push(thread::spawn(move || {
            let mut conn: EntraConnection = client.get_connection().unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                record(set_get(&mut conn, &key, i));
                thread::sleep(Duration::from_millis(25));
            }
        }));
    }
    for w in 0..POOL_WORKERS {
        let (pool, stop, record) = (pool.clone(), Arc::clone(&stop), record.clone());
        let key = format!("{}:pool:{w}", flow.name);
        threads.push(thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match pool.get() {
                    Ok(mut conn) => record(set_get(&mut *conn, &key, i)),
                    Err(e) => record(Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "pool checkout failed",
                        e.to_string(),
                    )))),
                }
                thread::sleep(Duration::from_millis(25));
            }
        }));
    }
    // Connections that sit idle for several token lifetimes, then must still work.
    for _ in 0..IDLE_CONNECTIONS {
        let (client, record) = (client.clone(), record.clone());
        threads.push(thread::spawn(move || {
            let mut conn = client.get_connection().unwrap();
            for _ in 0..2 {
                thread::sleep(duration / 2);
                record(redis::cmd("PING").query::<()>(&mut conn));
            }
        }));
    }
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("worker thread");
    }
    let generation = provider.current().map_or(0, |(g, _)| g.0);
    let fetch_failures = events
        .try_iter()
        .filter(|e| matches!(e, Event::FetchFailed { .. }))
        .count() as u64;
    Report {
        name: flow.name.to_owned(),
        connections: PLAIN_WORKERS + IDLE_CONNECTIONS + POOL_SIZE as usize,
        commands: commands.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        rotations: generation.saturating_sub(1),
        fetch_failures,
    }
}

fn run_all_flows(emu: &Emulator, pem: &std::path::Path) -> Vec<Report> {
    let flows = flows(emu, pem).expect("every flow configures from the emulator's environment");
    thread::scope(|s| {
        let handles: Vec<_> = flows
            .into_iter()
            .map(|flow| s.spawn(move || run_flow(flow, emu, SCENARIO_DURATION)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("flow thread"))
            .collect()
    })
}

fn check(title: &str, emu: &Emulator, reports: &[Report]) {
    let counters = emu.counters();
    println!("\n{title}");
    for report in reports {
        println!("  {report}");
    }
    println!(
        "  emulator: {} connections accepted, {} AUTH ok, {} AUTH failed, {} closed for expiry, {} commands forwarded, {} faults served",
        counters.redis_connections_accepted,
        counters.redis_auth_ok,
        counters.redis_auth_failed,
        counters.redis_closed_for_expiry,
        counters.redis_commands_forwarded,
        counters.faults_served
    );
    let min_rotations = SCENARIO_DURATION.as_secs() / TOKEN_LIFETIME.as_secs();
    for report in reports {
        assert_eq!(report.failures, 0, "{report}");
        assert!(report.commands > 1000, "{report}");
        assert!(
            report.rotations >= min_rotations,
            "{report}: fewer than {min_rotations} rotations"
        );
    }
    assert_eq!(
        counters.redis_closed_for_expiry, 0,
        "no connection may be closed for an expired token"
    );
}

#[test]
fn every_identity_flow_keeps_every_connection_alive_across_rotations() {
    let (emu, pem) = start_emulator("plain");
    let reports = run_all_flows(&emu, &pem);
    check(
        "blocking runtime, 6 s tokens, 42 s, no faults",
        &emu,
        &reports,
    );
}

#[test]
fn identity_faults_that_clear_before_expiry_cost_no_command() {
    let (emu, pem) = start_emulator("faults");
    let stop = Arc::new(AtomicBool::new(false));
    let injector = {
        let stop = Arc::clone(&stop);
        let faults = emu.faults().clone();
        thread::spawn(move || {
            let kinds = [
                Fault::status(500).times(2),
                Fault::too_many_requests(1),
                Fault::delay(Duration::from_millis(800)),
                // Longer than the 1.5 s request timeout: the request is abandoned and retried.
                Fault::delay(Duration::from_millis(2500)),
                Fault::new(FaultKind::MalformedBody),
                Fault::status(503).times(2),
                Fault::new(FaultKind::CloseConnection),
            ];
            let endpoints = [Endpoint::Imds, Endpoint::AppService, Endpoint::Entra];
            let mut n = 0;
            // Wait for every provider's first token, then a fault every 1.5 s.
            thread::sleep(Duration::from_secs(3));
            while !stop.load(Ordering::Relaxed) {
                faults.inject(
                    kinds[n % kinds.len()]
                        .clone()
                        .only(endpoints[n % endpoints.len()]),
                );
                n += 1;
                thread::sleep(Duration::from_millis(1500));
            }
        })
    };
    let reports = run_all_flows(&emu, &pem);
    stop.store(true, Ordering::Relaxed);
    injector.join().unwrap();
    check(
        "blocking runtime, 6 s tokens, 42 s, identity faults every 1.5 s (500 x2, 429 + Retry-After 1 s, 0.8 s answer, 2.5 s hang past the timeout, malformed body, 503 x2, closed connection)",
        &emu,
        &reports,
    );
    let retried: u64 = reports.iter().map(|r| r.fetch_failures).sum();
    assert!(retried > 0, "the events show the retries");
    assert!(emu.counters().faults_served > 10);
}

fn imds_at(endpoint: &str) -> TokenSource {
    TokenSource::ManagedIdentity(ManagedIdentity::Imds(
        Imds::new(ManagedIdentityId::SystemAssigned)
            .with_pod_identity_host(endpoint)
            .unwrap(),
    ))
}

#[test]
fn wrong_client_secret_gives_a_clear_non_retryable_error() {
    let (emu, pem) = start_emulator("secret");
    let _ = std::fs::remove_file(pem);
    let mut env: std::collections::BTreeMap<String, String> = emu.env().into_iter().collect();
    env.insert(
        "AZURE_CLIENT_SECRET".to_owned(),
        "not-the-secret".to_owned(),
    );
    let source = TokenSource::ClientSecret(
        redis_entraid_core::identity::client_secret::ClientSecret::from_env(&env).unwrap(),
    );
    let err = Provider::builder()
        .config(e2e_config())
        .http(http(&emu))
        .startup(Startup::FailFast)
        .build(source)
        .unwrap_err();
    let text = err.to_string();
    println!("wrong secret: {text}");
    match &err {
        StartupError::FetchFailed(e) => assert!(!e.is_retryable(), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(
        text.contains("invalid_client") && text.contains("AADSTS7000215"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-secret"),
        "the secret never reaches an error message"
    );
}

#[test]
fn token_without_oid_gives_a_clear_error() {
    let (emu, pem) = start_emulator("oid");
    let _ = std::fs::remove_file(pem);
    emu.faults()
        .inject(Fault::new(FaultKind::TokenWithoutOid).only(Endpoint::Imds));
    let err = Provider::builder()
        .config(e2e_config())
        .startup(Startup::FailFast)
        .build(imds_at(&emu.imds_endpoint()))
        .unwrap_err();
    let text = err.to_string();
    println!("token without oid: {text}");
    assert!(
        text.contains("no oid claim") && text.contains("username"),
        "{text}"
    );
}

#[test]
fn identity_endpoint_down_at_startup_follows_the_startup_policy() {
    // Nothing listens on port 9 of loopback: every request is refused at once.
    let down = "http://127.0.0.1:9";
    let started = Instant::now();
    let err = Provider::builder()
        .config(e2e_config())
        .startup(Startup::Wait(Duration::from_secs(2)))
        .build(imds_at(down))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StartupError::TimedOut {
                last_error: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    println!("wait policy: {err}");

    let err = Provider::builder()
        .config(e2e_config())
        .startup(Startup::FailFast)
        .build(imds_at(down))
        .unwrap_err();
    assert!(matches!(err, StartupError::FetchFailed(_)), "{err:?}");
    println!("fail-fast policy: {err}");

    // Lazy: returns at once, and the token arrives once the endpoint answers.
    let (emu, pem) = start_emulator("lazy");
    let _ = std::fs::remove_file(pem);
    emu.faults()
        .inject(Fault::status(503).times(3).only(Endpoint::Imds));
    let started = Instant::now();
    let provider = Provider::builder()
        .config(e2e_config())
        .startup(Startup::Lazy)
        .build(imds_at(&emu.imds_endpoint()))
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(200));
    let (generation, credentials) = provider
        .wait_newer(None, Duration::from_secs(10))
        .expect("token after recovery");
    assert_eq!(generation.0, 1);
    assert_eq!(credentials.username(), emu.default_oid());
    assert_eq!(emu.counters().faults_served, 3);
}

#[test]
fn wrongpass_from_redis_fetches_a_fresh_token_and_the_command_succeeds() {
    use redis_entraid_core::event::Generation;
    use redis_entraid_core::token::{AccessToken, TokenResponse};
    use redis_entraid_emulator::TokenSpec;

    let (emu, pem) = start_emulator("wrongpass");
    let _ = std::fs::remove_file(pem);
    // A token signed by another key: well-formed, but the proxy answers WRONGPASS.
    let stranger =
        Emulator::start_blocking(Emulator::builder().fresh_signing_key().without_redis()).unwrap();
    let oid = emu.default_oid().to_owned();
    // Each later token lives longer, so the provider takes each as newer.
    let spec = |hours: u64| TokenSpec::for_oid(&oid).lifetime(Duration::from_secs(hours * 3600));
    let tokens = [
        emu.mint_token(&spec(1)),
        stranger.mint_token(&spec(2)),
        emu.mint_token(&spec(3)),
    ];
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let fetcher = move |_timeout: Duration| {
        let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
        // No expires_in: the lifetime comes from each token's exp claim.
        Ok(TokenResponse::new(AccessToken::new(
            tokens[n.min(tokens.len() - 1)].clone(),
        )))
    };
    let provider = Provider::builder()
        .config(e2e_config())
        .build_with_fetcher(fetcher)
        .unwrap();
    let events = provider.events();
    let client = EntraClient::new(
        redis::Client::open(redis_url(&emu)).unwrap(),
        provider.clone(),
    );
    let mut conn = client.get_connection().unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("1")
        .query::<()>(&mut conn)
        .unwrap();

    // The next token is one Redis will reject.
    thread::sleep(Duration::from_millis(600));
    provider.refresh_now();
    let (generation, _) = provider
        .wait_newer(Some(Generation(1)), Duration::from_secs(5))
        .unwrap();
    assert!(generation.0 >= 2);

    // Whichever comes first, the idle re-authenticator or this command, meets WRONGPASS,
    // reports it, waits for the fresh token and AUTHs again: the command still succeeds.
    let started = Instant::now();
    let value: String = redis::cmd("GET")
        .arg("k")
        .query(&mut conn)
        .expect("recovered after one re-AUTH");
    assert_eq!(value, "1");
    println!("recovered from WRONGPASS in {:?}", started.elapsed());
    assert_eq!(
        conn.generation(),
        Some(Generation(3)),
        "re-authenticated with the fresh token"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(
        events
            .try_iter()
            .any(|e| matches!(e, Event::ReauthFailed { .. })),
        "the failure is reported, never silent"
    );
    assert!(emu.counters().redis_auth_failed >= 1);
}
