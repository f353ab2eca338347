//! `redis-entraid watch <url>`: the provider and N busy connections, live, then a summary
//!
//! Everything shown comes from the library's public surface: the provider's event
//! subscription, its status, each connection's status (generation, when it re-authenticated).
//! The same observations feed the metrics (`--prometheus`) through the core's
//! [`MetricsTracker`], so the tool works without the runtimes' own metrics hook.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis_entraid_blocking::redis_sync::EntraClient;
use redis_entraid_blocking::{Fetcher, IdentityFetcher, Provider, Startup};
use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::error::FetchError;
use redis_entraid_core::event::{Event, Generation, Status};
use redis_entraid_core::fan_out::FanOutLog;
use redis_entraid_core::metrics::{record, MetricsTracker};
use redis_entraid_core::token::TokenResponse;
use serde_json::json;

use crate::acquire;
use crate::error::CliError;
use crate::source::{self, SourceArg};
use crate::style::Style;

/// What `watch` was asked to do
pub(crate) struct WatchArgs {
    pub(crate) url: String,
    pub(crate) source: SourceArg,
    pub(crate) scope: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) connections: usize,
    pub(crate) duration: Option<Duration>,
    pub(crate) interval: Duration,
    pub(crate) prometheus: Option<std::net::SocketAddr>,
    pub(crate) plain: bool,
    pub(crate) json: bool,
    pub(crate) tuning: Tuning,
    /// Identity variables to use instead of the process environment (the demo's emulator)
    pub(crate) env: Option<std::collections::BTreeMap<String, String>>,
}

/// Refresh and retry settings; the library's defaults unless given (short-lived test tokens
/// need shorter ones)
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tuning {
    pub(crate) refresh_ratio: Option<f64>,
    pub(crate) lower_bound: Option<Duration>,
    pub(crate) min_interval: Option<Duration>,
    pub(crate) retry_initial: Option<Duration>,
    pub(crate) retry_max: Option<Duration>,
}

impl Tuning {
    fn config(&self, timeout: Duration) -> Result<Config, CliError> {
        let bad = |e| CliError::usage("invalid refresh or retry setting").cause(e);
        let mut refresh = RefreshPolicy::builder();
        if let Some(r) = self.refresh_ratio {
            refresh = refresh.ratio(r);
        }
        if let Some(d) = self.lower_bound {
            refresh = refresh.lower_bound(d);
        }
        if let Some(d) = self.min_interval {
            refresh = refresh.min_interval(d);
        }
        let mut retry = RetryPolicy::builder();
        if let Some(d) = self.retry_initial {
            retry = retry.initial_delay(d);
        }
        if let Some(d) = self.retry_max {
            retry = retry.max_delay(d);
        }
        Config::builder()
            .refresh(refresh.build().map_err(bad)?)
            .retry(retry.build().map_err(bad)?)
            .request_timeout(timeout)
            .build()
            .map_err(bad)
    }
}

/// Installs the Prometheus exporter with its HTTP listener and describes every metric
fn install_prometheus(addr: std::net::SocketAddr) -> Result<(), CliError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])
        .and_then(|b| b.install())
        .map_err(|e| {
            CliError::usage(format!("cannot serve Prometheus metrics on {addr}"))
                .cause(e)
                .advice("pick a free address, e.g. --prometheus 127.0.0.1:9464")
        })?;
    redis_entraid_core::metrics::describe_all();
    Ok(())
}

/// What the live view shows, updated by the event, worker and tick threads
#[derive(Default)]
struct Live {
    status: Option<Status>,
    generation: Option<Generation>,
    token_arrived: Option<Instant>,
    expires_at: Option<Instant>,
    next_fetch_at: Option<Instant>,
    arrivals: BTreeMap<Generation, (Instant, Option<Instant>)>,
    tokens: u64,
    fetch_failures: u64,
    reauth_failures: u64,
    expirations: u64,
    last_fetch: Option<Duration>,
    events: VecDeque<String>,
    event_count: u64,
    source: String,
}

struct Counters {
    commands: AtomicU64,
    failures: AtomicU64,
    lost: AtomicU64,
    reauths: AtomicU64,
}

/// Times each fetch for the metrics (the fetch's start feeds the tracker) and names the
/// chain's winner once the library reports it
struct TimedFetcher {
    inner: IdentityFetcher,
    tracker: Arc<Mutex<MetricsTracker>>,
    live: Arc<Mutex<Live>>,
    subscribed: Arc<Gate>,
}

/// Opened once the tool subscribed to the provider's events: the first fetch waits for it, so
/// the first token's event is never missed (the provider starts fetching as it is built)
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *lock(&self.open) = true;
        self.opened.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let guard = lock(&self.open);
        let _ = self
            .opened
            .wait_timeout_while(guard, timeout, |open| !*open);
    }
}

impl Fetcher for TimedFetcher {
    fn fetch(&self, timeout: Duration) -> Result<TokenResponse, FetchError> {
        self.subscribed.wait(timeout);
        let started = Instant::now();
        lock(&self.tracker).on_fetch_started(started);
        let result = acquire::acquire(&self.inner, timeout);
        let took = started.elapsed();
        let mut live = lock(&self.live);
        live.last_fetch = Some(took);
        match result {
            Ok(acquired) => {
                if acquired.answered_by != self.inner.name() {
                    lock(&self.tracker).set_source(acquired.answered_by.clone());
                    live.source = acquired.answered_by.clone();
                }
                Ok(acquired.token)
            }
            Err((error, _)) => Err(error),
        }
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn redis_client(url: &str) -> Result<redis::Client, CliError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        CliError::usage(format!("{url:?} is not a Redis URL"))
            .cause(e)
            .advice("write it as rediss://<cache-name>.<region>.redis.azure.net:10000")
    })?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(CliError::usage(format!(
            "{url:?} has scheme {}:, not redis: or rediss:",
            parsed.scheme()
        )));
    }
    let ca = std::env::var("SSL_CERT_FILE")
        .ok()
        .filter(|v| !v.is_empty());
    let client = match (parsed.scheme(), ca) {
        // Trust SSL_CERT_FILE as the identity requests do (a private or emulator CA).
        ("rediss", Some(ca)) => {
            let pem = std::fs::read(&ca)
                .map_err(|e| CliError::usage(format!("cannot read SSL_CERT_FILE {ca}")).cause(e))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        _ => redis::Client::open(url),
    };
    client.map_err(|e| CliError::usage(format!("{url:?} is not a usable Redis URL")).cause(e))
}

/// Runs the provider and the connections until the duration ends or Ctrl-C
///
/// # Errors
/// A usage error for a bad URL or source; a failure when no first token or connection comes.
pub(crate) fn run(args: &WatchArgs) -> Result<i32, CliError> {
    let client = redis_client(&args.url)?;
    let config = args.tuning.config(args.timeout)?;
    let token_source = match &args.env {
        Some(env) => source::token_source_in(env, args.source, args.scope.as_deref())?,
        None => source::token_source(args.source, args.scope.as_deref())?,
    };
    let imds = acquire::is_imds(&token_source);
    let inner = acquire::fetcher(token_source)?;
    if let Some(addr) = args.prometheus {
        install_prometheus(addr)?;
        eprintln!("serving Prometheus metrics on http://{addr}/metrics");
    }
    let tracker = Arc::new(Mutex::new(MetricsTracker::new(inner.name())));
    let live = Arc::new(Mutex::new(Live {
        source: inner.name(),
        ..Live::default()
    }));
    let subscribed = Arc::new(Gate::default());
    let fetcher = TimedFetcher {
        inner,
        tracker: Arc::clone(&tracker),
        live: Arc::clone(&live),
        subscribed: Arc::clone(&subscribed),
    };
    let started = Instant::now();
    let provider = Provider::builder()
        .config(config)
        .startup(Startup::Lazy)
        .build_with_fetcher(fetcher)
        .map_err(|e| CliError::failed("the provider did not start").cause(e))?;
    let events = provider.events();
    subscribed.open();
    let first = provider.wait_newer(None, args.timeout.max(Duration::from_secs(1)));
    if first.is_none() {
        let cause = provider
            .last_error()
            .map_or_else(|| "no answer".to_owned(), |e| crate::error::chain(&e));
        let advice = provider
            .last_error()
            .map(|e| crate::advice::for_fetch(&e, imds))
            .unwrap_or_else(|| {
                "run `redis-entraid check` on this URL for a step-by-step diagnosis".to_owned()
            });
        return Err(CliError::failed(format!(
            "no first token within {}: {cause}",
            secs(args.timeout)
        ))
        .advice(advice));
    }
    let entra = EntraClient::new(client, provider.clone());
    let fan_out = Arc::new(FanOutLog::default());
    let counters = Arc::new(Counters {
        commands: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        reauths: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let plain = args.plain || !Style::stdout().is_on();
    let out = Style::stdout();

    // Events: metrics, the live state, and one line each in plain mode.
    let event_thread = {
        let (tracker, live, fan_out) = (
            Arc::clone(&tracker),
            Arc::clone(&live),
            Arc::clone(&fan_out),
        );
        thread::spawn(move || {
            for event in events {
                let now = Instant::now();
                record(&lock(&tracker).on_event(&event, now));
                let line = describe(&event, now, started);
                let mut l = lock(&live);
                l.event_count += 1;
                match &event {
                    Event::Refreshed {
                        generation,
                        expires_at,
                        refresh_at,
                    } => {
                        let previous = l.expires_at;
                        l.arrivals.insert(*generation, (now, previous));
                        l.generation = Some(*generation);
                        l.token_arrived = Some(now);
                        l.expires_at = Some(*expires_at);
                        l.next_fetch_at = Some(*refresh_at);
                        l.tokens += 1;
                    }
                    Event::TokenNotNewer { refresh_at, .. } => l.next_fetch_at = Some(*refresh_at),
                    Event::FetchFailed {
                        next_attempt_at, ..
                    } => {
                        l.fetch_failures += 1;
                        l.next_fetch_at = Some(*next_attempt_at);
                    }
                    Event::ReauthFailed { generation, .. } => {
                        l.reauth_failures += 1;
                        fan_out.record_failure(*generation);
                    }
                    Event::Expired { .. } => l.expirations += 1,
                    _ => {}
                }
                if l.events.len() == 6 {
                    l.events.pop_front();
                }
                l.events.push_back(line.clone());
                drop(l);
                if plain {
                    println!("{line}");
                }
                if matches!(event, Event::Stopped) {
                    return;
                }
            }
        })
    };

    // Connections: each runs a command every interval and notices its re-authentications.
    let mut workers = Vec::new();
    for n in 0..args.connections {
        let mut conn = entra.get_connection().map_err(|e| {
            CliError::failed(format!("connection {} could not be opened", n + 1))
                .cause(e)
                .advice("run `redis-entraid check` on this URL for a step-by-step diagnosis")
        })?;
        let (counters, stop, live, fan_out) = (
            Arc::clone(&counters),
            Arc::clone(&stop),
            Arc::clone(&live),
            Arc::clone(&fan_out),
        );
        let interval = args.interval;
        workers.push(thread::spawn(move || {
            let mut seen = conn.generation();
            let key = format!("redis-entraid:watch:{}:{}", std::process::id(), n + 1);
            while !stop.load(Ordering::Relaxed) {
                let result: redis::RedisResult<i64> = redis::cmd("INCR").arg(&key).query(&mut conn);
                match result {
                    Ok(_) => counters.commands.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if e.is_io_error() || e.is_connection_dropped() {
                            counters.lost.fetch_add(1, Ordering::Relaxed);
                        }
                        let line = format!(
                            "[{:>7.2}s] connection {}: command failed: {e}",
                            started.elapsed().as_secs_f64(),
                            n + 1
                        );
                        if plain {
                            println!("{line}");
                        }
                        let mut l = lock(&live);
                        if l.events.len() == 6 {
                            l.events.pop_front();
                        }
                        l.events.push_back(line);
                        counters.failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                note_reauth(&conn, &mut seen, &counters, &live, &fan_out);
                thread::sleep(interval);
            }
            // A re-authentication since the last command still counts.
            note_reauth(&conn, &mut seen, &counters, &live, &fan_out);
        }));
    }

    // Ctrl-C ends the run like the duration does, so the summary is always printed.
    {
        let stop = Arc::clone(&stop);
        let _ = thread::Builder::new()
            .name("ctrl-c".to_owned())
            .spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
    }

    // The view and the periodic metrics.
    let mut drawn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        {
            let mut t = lock(&tracker);
            let mut obs = t.tick(now);
            obs.extend(t.on_fan_out(&fan_out.reports(), now));
            obs.extend(t.on_dropped_events(provider.dropped_events()));
            drop(t);
            record(&obs);
        }
        lock(&live).status = Some(provider.status());
        if !plain {
            let view = render(&lock(&live), &counters, &fan_out, now, started, out);
            if drawn > 0 {
                print!("\x1b[{drawn}A\x1b[J");
            }
            drawn = view.lines().count();
            print!("{view}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        thread::sleep(Duration::from_millis(if plain { 100 } else { 250 }));
    }
    // No new token from here on, so every rotation counted is one the connections could
    // follow; then the workers note their last re-authentications and stop.
    provider.shutdown();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    // Let the last re-authentications and events land in the metrics and the summary.
    {
        let now = Instant::now();
        let mut t = lock(&tracker);
        let obs = t.on_fan_out(&fan_out.reports(), now);
        drop(t);
        record(&obs);
    }
    let summary = summarize(
        &lock(&live),
        &counters,
        &fan_out,
        started.elapsed(),
        provider.dropped_events(),
    );
    drop(entra);
    drop(provider);
    let _ = event_thread.join();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        print_summary(&summary, out);
    }
    let failed = counters.failures.load(Ordering::Relaxed) > 0 || lock(&live).expirations > 0;
    Ok(if failed { crate::error::EXIT_FAILED } else { 0 })
}

/// Counts a re-authentication of `conn` since `seen`, and its fan-out latency and margin
fn note_reauth(
    conn: &redis_entraid_blocking::redis_sync::EntraConnection,
    seen: &mut Option<Generation>,
    counters: &Counters,
    live: &Mutex<Live>,
    fan_out: &FanOutLog,
) {
    let status = conn.status();
    if status.generation <= *seen {
        return;
    }
    *seen = status.generation;
    counters.reauths.fetch_add(1, Ordering::Relaxed);
    if let (Some(generation), Some(at)) = (status.generation, status.authenticated_at) {
        let arrival = lock(live).arrivals.get(&generation).copied();
        if let Some((arrived, old_expiry)) = arrival {
            let margin = old_expiry.map(|exp| exp.saturating_duration_since(at));
            fan_out.record_ok(generation, at.saturating_duration_since(arrived), margin);
        }
    }
}

/// The event's line as the runtimes log it (the core's wording), stamped with the run's clock
fn describe(event: &Event, now: Instant, started: Instant) -> String {
    format!(
        "[{:>7.2}s] {}",
        now.duration_since(started).as_secs_f64(),
        crate::error::one_line(&event.describe(now))
    )
}

fn render(
    l: &Live,
    c: &Counters,
    fan_out: &FanOutLog,
    now: Instant,
    started: Instant,
    out: Style,
) -> String {
    let status = match l.status {
        Some(Status::Valid { .. }) => out.green("valid"),
        Some(Status::Retrying { failures, .. }) => {
            out.yellow(&format!("retrying ({failures} failures)"))
        }
        Some(Status::Expired { .. }) => out.red("EXPIRED"),
        Some(Status::Starting { .. }) => out.yellow("starting"),
        Some(Status::Stopped) => out.dim("stopped"),
        _ => "?".to_owned(),
    };
    let age = l.token_arrived.map_or_else(
        || "-".to_owned(),
        |t| secs(now.saturating_duration_since(t)),
    );
    let left = l.expires_at.map_or_else(
        || "-".to_owned(),
        |t| secs(t.saturating_duration_since(now)),
    );
    let next = l.next_fetch_at.map_or_else(
        || "-".to_owned(),
        |t| secs(t.saturating_duration_since(now)),
    );
    let last = fan_out
        .reports()
        .into_iter()
        .rev()
        .find(|r| r.connections > 0);
    let fan = last.map_or_else(
        || "-".to_owned(),
        |r| {
            format!(
                "#{}: {} conns, p50 {:.1}ms, max {:.1}ms",
                r.generation.0,
                r.connections,
                r.p50.as_secs_f64() * 1e3,
                r.max.as_secs_f64() * 1e3
            )
        },
    );
    let mut s = String::new();
    s.push_str(&format!(
        "{} {}  {}  source {}  up {}\n",
        out.bold("redis-entraid watch"),
        status,
        l.generation
            .map_or_else(|| "no token".to_owned(), |g| format!("token #{}", g.0)),
        l.source,
        secs(now.duration_since(started))
    ));
    s.push_str(&format!(
        "  token age {age}, valid {left} more, next fetch in {next}, last fetch {}\n",
        l.last_fetch.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.0}ms", d.as_secs_f64() * 1e3)
        )
    ));
    s.push_str(&format!(
        "  rotations {}  fetch failures {}  re-auths {} ok / {} failed  last fan-out {fan}\n",
        l.tokens.saturating_sub(1),
        l.fetch_failures,
        c.reauths.load(Ordering::Relaxed),
        l.reauth_failures,
    ));
    s.push_str(&format!(
        "  commands {}  failed {}  connections lost {}  expirations {}\n",
        c.commands.load(Ordering::Relaxed),
        c.failures.load(Ordering::Relaxed),
        c.lost.load(Ordering::Relaxed),
        l.expirations
    ));
    for e in &l.events {
        // A wrapped line would break the cursor arithmetic of the redraw: keep each short.
        let clipped: String = e.chars().take(110).collect();
        s.push_str(&format!("  {}\n", out.dim(&clipped)));
    }
    s
}

fn summarize(
    l: &Live,
    c: &Counters,
    fan_out: &FanOutLog,
    ran: Duration,
    dropped: u64,
) -> serde_json::Value {
    let reports = fan_out.reports();
    let worst = reports.iter().map(|r| r.max).max().unwrap_or_default();
    let min_margin = reports.iter().filter_map(|r| r.min_margin).min();
    json!({
        "ran_s": ran.as_secs_f64(),
        "source": l.source,
        "tokens": l.tokens,
        "rotations": l.tokens.saturating_sub(1),
        "last_generation": l.generation.map(|g| g.0),
        "fetch_failures": l.fetch_failures,
        "expirations": l.expirations,
        "reauths_ok": c.reauths.load(Ordering::Relaxed),
        "reauth_failures": l.reauth_failures,
        "fan_out_max_ms": worst.as_secs_f64() * 1e3,
        "min_margin_ms": min_margin.map(|m| m.as_secs_f64() * 1e3),
        "commands": c.commands.load(Ordering::Relaxed),
        "command_failures": c.failures.load(Ordering::Relaxed),
        "connections_lost": c.lost.load(Ordering::Relaxed),
        "events": l.event_count,
        "events_dropped": dropped,
    })
}

fn print_summary(s: &serde_json::Value, out: Style) {
    println!(
        "\n{} after {:.0}s ({})",
        out.bold("summary"),
        s["ran_s"].as_f64().unwrap_or(0.0),
        s["source"].as_str().unwrap_or("?")
    );
    let rows = [
        ("token rotations", "rotations"),
        ("token fetch failures", "fetch_failures"),
        ("tokens expired", "expirations"),
        ("re-authentications", "reauths_ok"),
        ("re-auth failures", "reauth_failures"),
        ("commands run", "commands"),
        ("commands failed", "command_failures"),
        ("connections lost", "connections_lost"),
        ("events dropped", "events_dropped"),
    ];
    for (label, key) in rows {
        println!("  {label:<24}{}", s[key]);
    }
    println!(
        "  {:<24}{:.1}ms",
        "slowest fan-out",
        s["fan_out_max_ms"].as_f64().unwrap_or(0.0)
    );
    if let Some(m) = s["min_margin_ms"].as_f64() {
        println!("  {:<24}{:.0}ms", "least margin left", m);
    }
}
