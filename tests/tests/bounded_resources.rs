//! Bounded resources under a hostile identity endpoint, on every runtime: hung custom
//! callbacks, huge and slow-drip answers, CLIs that leave processes behind, a provider failing
//! a thousand times, and a flood of commands
//!
//! The fetch-level rules run on the two identity executors' I/O backends: blocking-io's
//! `IdentityFetcher` (which the blocking and async-std runtimes both run) and tokio's
//! `Identity`. The provider-level checks run on all three runtimes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use redis_entraid_blocking::HttpConfig;
use redis_entraid_core::config::{Config, RetryPolicy};
use redis_entraid_core::error::FetchError;
use redis_entraid_core::event::{Generation, Status};
use redis_entraid_core::identity::cli::AzureCli;
use redis_entraid_core::identity::custom::CustomSource;
use redis_entraid_core::identity::imds::Imds;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::startup::Startup;
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;
use redis_entraid_emulator::{HostileServer, Hostility};

#[path = "common/backend.rs"]
mod backend;

use backend::{tokio_runtime, Backend, BlockingIo, TokioIo};

/// IMDS at `base` (plain http on loopback, as AAD Pod Identity would be)
fn imds_at(base: &str) -> TokenSource {
    let imds = Imds::new(ManagedIdentityId::SystemAssigned)
        .with_pod_identity_host(base)
        .unwrap();
    TokenSource::ManagedIdentity(ManagedIdentity::Imds(imds))
}

fn long_token() -> TokenResponse {
    TokenResponse::new(unsigned_token(r#"{"oid":"me","exp":4102444800}"#)).with_expires_in(3600)
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
        Ok(long_token())
    });
    (source, calls, release)
}

/// How much resident memory may grow over the measured 1000 fetches without a leak: glibc
/// keeps up to 8 malloc arenas per core (16 here), and each fetch thread's arena may keep a
/// freed ~1 MiB body buffer resident (its mmap threshold rises after the first such free), so
/// slack is bounded by about 16 x 2 MiB. Measured: 0.1 to 1.3 MiB alone, 12.6 MiB and 17.2 MiB
/// on a fresh clone with the machine busy (the second failed the first, unreasoned 16 MiB
/// bound). A leak of one capped body per fetch would be 1 GiB.
const ALLOCATOR_SLACK_KIB: u64 = 40 * 1024;

/// Threads and memory are per process and the tests of a binary share one: every test here
/// holds this lock, so none disturbs another's measurement
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
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

fn a_hung_custom_callback_runs_once_and_later_fetches_say_it_is_still_running<B: Backend>() {
    let _serial = serial();
    let (source, calls, release) = hanging_callback();
    let fetcher = B::fetcher(TokenSource::Custom(source));
    let started = Instant::now();
    let first = B::fetch(&fetcher, Duration::from_millis(200)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the fetch waited past its deadline"
    );
    assert!(
        first.to_string().contains("did not return within"),
        "{first}"
    );
    for _ in 0..5 {
        let again = B::fetch(&fetcher, Duration::from_millis(200)).unwrap_err();
        assert!(again.to_string().contains("still running"), "{again}");
        assert!(again.is_retryable());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a stuck callback was started again"
    );
    // Once it returns, the next fetch calls it afresh (and it no longer blocks).
    drop(release);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match B::fetch(&fetcher, Duration::from_secs(1)) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("still running"), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the callback never became free: {e}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn an_identity_answer_over_one_mebibyte_is_refused_naming_the_cap<B: Backend>() {
    let _serial = serial();
    let server = HostileServer::start(Hostility::HugeBody {
        bytes: 512 * 1024 * 1024,
    })
    .unwrap();
    let fetcher = B::fetcher(imds_at(&server.base_url()));
    let error = B::fetch(&fetcher, Duration::from_secs(5)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("larger than the 1048576 bytes allowed"),
        "{error}"
    );
}

fn a_slow_drip_answer_ends_at_the_fetch_deadline<B: Backend>() {
    let _serial = serial();
    let server = HostileServer::start(Hostility::SlowDrip {
        every: Duration::from_millis(20),
    })
    .unwrap();
    let fetcher = B::fetcher(imds_at(&server.base_url()));
    let started = Instant::now();
    let error = B::fetch(&fetcher, Duration::from_millis(300)).unwrap_err();
    // 4096 bytes at one per 20 ms would take 80 s; the deadline ends it.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}: {error}",
        started.elapsed()
    );
}

/// A fake `az` that records its working directory and process id, starts a grandchild that
/// keeps stdout open for 20 s, records the grandchild's id, and exits
#[cfg(unix)]
fn a_cli_whose_grandchild_holds_stdout_ends_at_the_deadline_and_the_group_is_killed<B: Backend>() {
    let _serial = serial();
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("fake-az-{}-{}", B::NAME, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("az");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\npwd > '{d}/cwd'\nsleep 20 &\necho $! > '{d}/grandchild'\nexit 0\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Only these tests run a CLI, one at a time (the lock), each with its own folder first on
    // PATH, so changing PATH affects nothing else.
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", dir.display()));
    let fetcher = B::fetcher(TokenSource::AzureCli(AzureCli::new()));
    let started = Instant::now();
    let error = B::fetch(&fetcher, Duration::from_secs(2)).unwrap_err();
    let took = started.elapsed();
    std::env::set_var("PATH", path);
    assert!(took < Duration::from_secs(4), "took {took:?}: {error}");
    // `/bin` may be a link to `/usr/bin`, which is what `pwd` then prints.
    let cwd = std::fs::read_to_string(dir.join("cwd")).unwrap();
    assert_eq!(
        std::fs::canonicalize(cwd.trim()).unwrap(),
        std::fs::canonicalize("/bin").unwrap(),
        "the CLI did not run in /bin"
    );
    let grandchild = std::fs::read_to_string(dir.join("grandchild")).unwrap();
    let proc = format!("/proc/{}/stat", grandchild.trim());
    let deadline = Instant::now() + Duration::from_secs(2);
    // Killed, then reaped by init (or at worst a zombie): never still sleeping.
    while std::fs::read_to_string(&proc).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            Instant::now() < deadline,
            "the grandchild outlived the fetch"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

macro_rules! every_backend {
    ($($(#[$meta:meta])* $scenario:ident),+ $(,)?) => {
        every_backend!(@one blocking_io, BlockingIo, $($(#[$meta])* $scenario),+);
        every_backend!(@one tokio_io, TokioIo, $($(#[$meta])* $scenario),+);
    };
    (@one $module:ident, $backend:ident, $($(#[$meta:meta])* $scenario:ident),+) => {
        mod $module {
            $(
                $(#[$meta])*
                #[test]
                fn $scenario() {
                    super::$scenario::<super::$backend>();
                }
            )+
        }
    };
}

every_backend!(
    a_hung_custom_callback_runs_once_and_later_fetches_say_it_is_still_running,
    an_identity_answer_over_one_mebibyte_is_refused_naming_the_cap,
    a_slow_drip_answer_ends_at_the_fetch_deadline,
    #[cfg(unix)]
    a_cli_whose_grandchild_holds_stdout_ends_at_the_deadline_and_the_group_is_killed,
);

// ---- provider-level bounds, once per runtime ----

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

fn failures(status: Status) -> u32 {
    match status {
        Status::Starting { failures }
        | Status::Retrying { failures, .. }
        | Status::Expired { failures, .. } => failures,
        _ => 0,
    }
}

/// A runtime's provider, started lazily for a real identity source
trait Runtime {
    type Provider;
    fn start_lazy(source: TokenSource, config: Config) -> Self::Provider;
    fn status(provider: &Self::Provider) -> Status;
    fn last_error(provider: &Self::Provider) -> Option<FetchError>;
}

struct Blocking;

impl Runtime for Blocking {
    type Provider = redis_entraid_blocking::Provider;
    fn start_lazy(source: TokenSource, config: Config) -> Self::Provider {
        redis_entraid_blocking::Provider::builder()
            .config(config)
            .startup(Startup::Lazy)
            .http(HttpConfig::default().ignore_ssl_cert_file())
            .build(source)
            .unwrap()
    }
    fn status(provider: &Self::Provider) -> Status {
        provider.status()
    }
    fn last_error(provider: &Self::Provider) -> Option<FetchError> {
        provider.last_error()
    }
}

struct Tokio;

impl Runtime for Tokio {
    type Provider = redis_entraid_tokio::Provider;
    fn start_lazy(source: TokenSource, config: Config) -> Self::Provider {
        let fetcher = TokioIo::fetcher(source);
        tokio_runtime()
            .block_on(
                redis_entraid_tokio::Provider::builder()
                    .config(config)
                    .startup(Startup::Lazy)
                    .build_with_fetcher(fetcher),
            )
            .unwrap()
    }
    fn status(provider: &Self::Provider) -> Status {
        provider.status()
    }
    fn last_error(provider: &Self::Provider) -> Option<FetchError> {
        provider.last_error()
    }
}

struct AsyncStd;

impl Runtime for AsyncStd {
    type Provider = redis_entraid_async_std::Provider;
    fn start_lazy(source: TokenSource, config: Config) -> Self::Provider {
        let (provider, driver) = redis_entraid_async_std::Provider::builder()
            .config(config)
            .startup(Startup::Lazy)
            .start_with_fetcher(BlockingIo::fetcher(source));
        smol::spawn(driver).detach();
        provider
    }
    fn status(provider: &Self::Provider) -> Status {
        provider.status()
    }
    fn last_error(provider: &Self::Provider) -> Option<FetchError> {
        provider.last_error()
    }
}

/// Waits until each provider has failed `n` times
fn until_failures<R: Runtime>(providers: &[R::Provider], n: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while providers.iter().any(|p| failures(R::status(p)) < n) {
        let counts: Vec<u32> = providers.iter().map(|p| failures(R::status(p))).collect();
        assert!(
            Instant::now() < deadline,
            "too slow: failures so far {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(target_os = "linux")]
fn threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints<R: Runtime>() {
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
    let start = |source, timeout| R::start_lazy(source, fast_retries(timeout));
    let providers = [
        start(TokenSource::Custom(callback), Duration::from_millis(5)),
        start(imds_at(&huge.base_url()), Duration::from_secs(2)),
        start(imds_at(&drip.base_url()), Duration::from_millis(10)),
    ];
    // Warm up (allocator arenas, thread stacks, connection pools), then measure.
    until_failures::<R>(&providers, 50, Duration::from_secs(30));
    let (threads_before, rss_before) = threads_and_rss();
    until_failures::<R>(&providers, 1050, Duration::from_secs(120));
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
    // Bound: at most a fetch thread per provider (on tokio: the blocking-pool thread running
    // the hung callback plus a few idle ones, kept for 10 s) and a few hostile-server
    // connection threads still winding down (each ends within a couple of 2 ms drips after the
    // client hangs up); before the fix every retry of the hung callback left a thread behind
    // (+1000; on tokio, up to the pool's 512).
    assert!(
        threads_after <= threads_before + 8,
        "threads grew from {threads_before} to {threads_after}"
    );
    // Each huge answer is read up to 1 MiB + 1 byte and dropped; what stays is allocator slack
    // (see ALLOCATOR_SLACK_KIB). tokio's uncapped reads once grew by 1.5 GiB.
    assert!(
        rss_after <= rss_before + ALLOCATOR_SLACK_KIB,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    for p in &providers {
        let error = R::last_error(p).map(|e| e.to_string()).unwrap_or_default();
        assert!(!error.is_empty());
    }
    assert!(R::last_error(&providers[0])
        .unwrap()
        .to_string()
        .contains("still running"));
    assert!(R::last_error(&providers[1])
        .unwrap()
        .to_string()
        .contains("larger than the 1048576 bytes allowed"));
}

/// Sends two million commands through `send` while the driver cannot read them, and checks
/// memory stayed bounded
#[cfg(target_os = "linux")]
fn flood(send: impl Fn()) {
    let (_, rss_before) = threads_and_rss();
    for _ in 0..1_000_000 {
        send();
    }
    let (_, rss_after) = threads_and_rss();
    eprintln!("VmRSS {rss_before} -> {rss_after} KiB over two million commands");
    // Bound: 8 MiB. The queue holds 64 commands; unbounded, two million took 230 MiB more on
    // the blocking runtime, 80 MiB more on tokio.
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[cfg(target_os = "linux")]
mod on_blocking {
    use super::*;

    #[test]
    fn threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints() {
        super::threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints::<Blocking>(
        );
    }

    /// Two million commands sent faster than the driver thread can read them
    #[test]
    fn a_flood_of_commands_stays_bounded_and_shutdown_still_lands() {
        let _serial = serial();
        let provider = redis_entraid_blocking::Provider::builder()
            .startup(Startup::Wait(Duration::from_secs(5)))
            .build_with_fetcher(|_timeout: Duration| Ok(long_token()))
            .unwrap();
        let (generation, _) = provider.current().unwrap();
        flood(|| {
            provider.refresh_now();
            provider.report_reauth(generation, Ok(()));
        });
        // However full the queue, shutdown is a flag and cannot be lost.
        provider.shutdown();
        assert_eq!(provider.status(), Status::Stopped);
    }
}

#[cfg(target_os = "linux")]
mod on_tokio {
    use super::*;

    #[test]
    fn threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints() {
        super::threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints::<Tokio>();
    }

    /// The driver cannot run while this test's loop does not yield (a current-thread runtime),
    /// so every command sent meanwhile would have to queue
    #[test]
    fn a_flood_of_commands_stays_bounded_and_shutdown_still_lands() {
        let _serial = serial();
        let runtime = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let provider = redis_entraid_tokio::Provider::builder()
                .startup(Startup::Wait(Duration::from_secs(5)))
                .build_with_fetcher(|_timeout: Duration| async { Ok(long_token()) })
                .await
                .unwrap();
            let (generation, _) = provider.current().unwrap();
            flood(|| {
                provider.refresh_now();
                provider.report_reauth(generation, Ok(()));
            });
            // The queue is full, yet shutdown is a flag and cannot be lost.
            provider.shutdown().await;
            assert_eq!(provider.status(), Status::Stopped);
        });
    }
}

#[cfg(target_os = "linux")]
mod on_async_std {
    use super::*;

    #[test]
    fn threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints() {
        super::threads_and_memory_stay_flat_over_1000_fetches_against_hostile_endpoints::<AsyncStd>(
        );
    }

    /// Two million commands sent before the driver runs at all
    #[test]
    fn a_flood_of_commands_stays_bounded_and_shutdown_still_lands() {
        let _serial = serial();
        let (provider, driver) = redis_entraid_async_std::Provider::builder()
            .start_with_fetcher(|_timeout: Duration| Ok(long_token()));
        // Not spawned yet: nothing reads the queue while it is flooded.
        flood(|| {
            provider.refresh_now();
            provider.report_reauth(Generation(1), Ok(()));
        });
        // However full the queue, shutdown is a flag and cannot be lost.
        smol::spawn(driver).detach();
        smol::block_on(provider.shutdown());
        assert_eq!(provider.status(), Status::Stopped);
    }
}
