//! Bounded resources on async-io under a hostile identity endpoint: hung custom callbacks,
//! huge and slow-drip answers (the identity executor itself is the blocking crate's, whose
//! tests pin each rule; these check the async-std driver and the `blocking` pool around it)

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use redis_entraid_async_std::{HttpConfig, IdentityFetcher, Provider, Startup};
use redis_entraid_core::config::{Config, RetryPolicy};
use redis_entraid_core::event::Status;
use redis_entraid_core::identity::custom::CustomSource;
use redis_entraid_core::identity::imds::Imds;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;
use redis_entraid_emulator::{HostileServer, Hostility};

/// IMDS at `base` (plain http on loopback, as AAD Pod Identity would be)
fn imds_at(base: &str) -> TokenSource {
    let imds = Imds::new(ManagedIdentityId::SystemAssigned)
        .with_pod_identity_host(base)
        .unwrap();
    TokenSource::ManagedIdentity(ManagedIdentity::Imds(imds))
}

/// A callback that blocks until the sender is dropped (or 2 min), counting its calls
fn hanging_callback() -> (CustomSource, Arc<AtomicU32>, mpsc::Sender<()>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let counted = Arc::clone(&calls);
    let source = CustomSource::new("vault", move |_scope: &str| {
        counted.fetch_add(1, Ordering::SeqCst);
        let _ = released
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(120));
        Ok(
            TokenResponse::new(unsigned_token(r#"{"oid":"me","exp":4102444800}"#))
                .with_expires_in(3600),
        )
    });
    (source, calls, release)
}

/// Threads and memory are per process and the tests of a binary share one: every test here
/// holds this lock, so none disturbs another's measurement
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn failures(provider: &Provider) -> u32 {
    match provider.status() {
        Status::Starting { failures }
        | Status::Retrying { failures, .. }
        | Status::Expired { failures, .. } => failures,
        _ => 0,
    }
}

/// (threads, resident KiB) of this process
fn threads_and_rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("Threads:"), field("VmRSS:"))
}

fn fast_retries(timeout: Duration) -> Config {
    Config::builder()
        .retry(
            RetryPolicy::builder()
                .max_attempts(1000)
                .initial_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(1))
                .jitter(0.0)
                .build()
                .unwrap(),
        )
        .request_timeout(timeout)
        .build()
        .unwrap()
}

/// Waits until each provider has failed `n` times
fn until_failures(providers: &[&Provider], n: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while providers.iter().any(|p| failures(p) < n) {
        let counts: Vec<u32> = providers.iter().map(|p| failures(p)).collect();
        assert!(
            Instant::now() < deadline,
            "too slow: failures so far {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(target_os = "linux")]
/// How much resident memory may grow over the measured 1000 fetches without a leak: glibc
/// keeps up to 8 malloc arenas per core (16 here), and each fetch thread's arena may keep a
/// freed ~1 MiB body buffer resident (its mmap threshold rises after the first such free), so
/// slack is bounded by about 16 x 2 MiB. Measured: 0.1 to 1.3 MiB alone, 12.6 MiB and 17.2 MiB
/// on a fresh clone with the machine busy (the second failed the first, unreasoned 16 MiB
/// bound). A leak of one capped body per fetch would be 1 GiB.
const ALLOCATOR_SLACK_KIB: u64 = 40 * 1024;

#[test]
fn threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints() {
    let _serial = serial();
    let huge = HostileServer::start(Hostility::HugeBody {
        bytes: 512 * 1024 * 1024,
    })
    .unwrap();
    let drip = HostileServer::start(Hostility::SlowDrip {
        every: Duration::from_millis(2),
    })
    .unwrap();
    let (callback, calls, _release) = hanging_callback();
    let start = |source: TokenSource, timeout: Duration| {
        let fetcher =
            IdentityFetcher::new(source, &HttpConfig::default().ignore_ssl_cert_file()).unwrap();
        let (provider, driver) = Provider::builder()
            .config(fast_retries(timeout))
            .startup(Startup::Lazy)
            .start_with_fetcher(fetcher);
        smol::spawn(driver).detach();
        provider
    };
    let providers = [
        start(TokenSource::Custom(callback), Duration::from_millis(5)),
        start(imds_at(&huge.base_url()), Duration::from_secs(2)),
        start(imds_at(&drip.base_url()), Duration::from_millis(10)),
    ];
    let refs: Vec<&Provider> = providers.iter().collect();
    // Warm up (allocator arenas, thread stacks, connection pools), then measure.
    until_failures(&refs, 50, Duration::from_secs(30));
    let (threads_before, rss_before) = threads_and_rss();
    until_failures(&refs, 1050, Duration::from_secs(120));
    let (threads_after, rss_after) = threads_and_rss();
    eprintln!(
        "threads {threads_before} -> {threads_after}, VmRSS {rss_before} -> {rss_after} KiB, \
         hostile connections {} + {}",
        huge.requests(),
        drip.requests()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the hung callback was started again"
    );
    // Bound: at most a fetch thread per provider and a few hostile-server connection threads
    // still winding down (each ends within a couple of 2 ms drips after the client hangs up);
    // before the fix every retry of the hung callback left a thread behind (+1000).
    assert!(
        threads_after <= threads_before + 8,
        "threads grew from {threads_before} to {threads_after}"
    );
    // Bound: 16 MiB. Each huge answer is read up to 1 MiB + 1 byte and dropped; what stays is
    // allocator slack. Measured growth over the 1000 fetches, run alone: 0.1 to 1.3 MiB on each
    // runtime (12 MiB once, with another test running alongside, hence the lock). A leak of
    // one capped body per fetch would be 1 GiB; tokio's uncapped reads grew by 1.5 GiB.
    assert!(
        rss_after <= rss_before + ALLOCATOR_SLACK_KIB,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    for p in &providers {
        let error = p.last_error().map(|e| e.to_string()).unwrap_or_default();
        assert!(!error.is_empty());
    }
    assert!(providers[0]
        .last_error()
        .unwrap()
        .to_string()
        .contains("still running"));
    assert!(providers[1]
        .last_error()
        .unwrap()
        .to_string()
        .contains("larger than the 1048576 bytes allowed"));
}

/// Two million commands sent before the driver runs at all
#[cfg(target_os = "linux")]
#[test]
fn a_flood_of_commands_stays_bounded_and_shutdown_still_lands() {
    let _serial = serial();
    let source = |_timeout: Duration| {
        Ok(
            TokenResponse::new(unsigned_token(r#"{"oid":"me","exp":4102444800}"#))
                .with_expires_in(3600),
        )
    };
    let (provider, driver) = Provider::builder().start_with_fetcher(source);
    // Not spawned yet: nothing reads the queue while it is flooded.
    let generation = redis_entraid_core::event::Generation(1);
    let (_, rss_before) = threads_and_rss();
    for _ in 0..1_000_000 {
        provider.refresh_now();
        provider.report_reauth(generation, Ok(()));
    }
    let (_, rss_after) = threads_and_rss();
    eprintln!("VmRSS {rss_before} -> {rss_after} KiB over two million commands");
    // Bound: 8 MiB. The queue holds 64 commands; unbounded, two million took
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // However full the queue, shutdown is a flag and cannot be lost.
    smol::spawn(driver).detach();
    smol::block_on(provider.shutdown());
    assert_eq!(provider.status(), Status::Stopped);
}
