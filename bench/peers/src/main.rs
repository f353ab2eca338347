//! Side-by-side benchmark of `redis-entraid-tokio` ("ours") and redis-rs's own `entra-id`
//! feature ("theirs") against one emulator in one process run (issue 13, goals 2-4).
//!
//! Every time that decides a goal is read on the emulator's side: a thread polls the
//! emulator's counters every 200 µs and keeps each change with its `Instant`, so the moment
//! a token was issued and the moment the proxy had verified the N-th `AUTH` are one clock for
//! both libraries and for the floor (bare `AUTH`s sent by this harness on the same
//! connections). Run `--help` for the knobs; `scripts/bench-peers.sh` runs it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, EntraIdCredentialsProvider, RetryConfig};
use redis_entraid_emulator::{Counters, Emulator, TokenSpec};
use redis_entraid_tokio::redis_async::{reauth_window, EntraClient, EntraConnection};
use redis_entraid_tokio::{Identity, Provider, Startup};

mod network;

/// redis-rs refreshes a fixed 240 s before expiry, so a 300 s token rotates 60 s after it
/// arrived; ours is configured to the same moment (lower bound 240 s) so both see the same
/// cadence. Shorter tokens would make redis-rs refresh in a loop.
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
const CYCLE: Duration = Duration::from_secs(60);
/// The two 1000-connection subjects run in the same process, half a cycle apart, so one's
/// rotation and floor never overlap the other's (and both share the machine's noise).
const STAGGER: Duration = Duration::from_secs(30);
/// Commands per second per probe connection, and probe connections per subject (P3).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
const PROBES: usize = 4;
/// The "during a rotation" window for P3: from the token's issue, this long.
const ROTATION_WINDOW: Duration = Duration::from_secs(1);
/// A control window of the same length this long before each token's issue, when nothing
/// happens (the other subject's rotation and floors are ≥ 9 s away): the p99 of a few
/// one-second windows scatters on a shared machine, and this shows by how much.
const CONTROL_OFFSET: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_micros(200);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lib {
    Ours,
    Theirs,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Ours => "ours (redis-entraid-tokio)",
            Lib::Theirs => "theirs (redis-rs entra-id)",
        }
    }
}

// ---------------------------------------------------------------------------------------
// The emulator-side clock

/// Every change of the emulator's counters, with when the poller saw it
#[derive(Default)]
struct CounterLog {
    samples: Mutex<Vec<(Instant, Counters)>>,
}

impl CounterLog {
    fn poll(&self, emu: &Emulator, stop: &AtomicBool) {
        let mut last = emu.counters();
        self.push(Instant::now(), last);
        while !stop.load(Ordering::Relaxed) {
            let c = emu.counters();
            if c != last {
                self.push(Instant::now(), c);
                last = c;
            }
            std::thread::sleep(POLL);
        }
    }

    fn push(&self, at: Instant, c: Counters) {
        if let Ok(mut s) = self.samples.lock() {
            s.push((at, c));
        }
    }

    fn snapshot(&self) -> Vec<(Instant, Counters)> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn latest(&self) -> Counters {
        self.samples
            .lock()
            .ok()
            .and_then(|s| s.last().map(|x| x.1))
            .unwrap_or_default()
    }

    /// Instants at which the Entra token endpoint answered with a token (one per token;
    /// two in one poll count twice at the same instant)
    fn token_issues(&self, from: Instant, to: Instant) -> Vec<Instant> {
        let s = self.snapshot();
        let mut out = Vec::new();
        for w in s.windows(2) {
            let (at, c) = w[1];
            if at >= from && at < to {
                for _ in w[0].1.tokens_issued..c.tokens_issued {
                    out.push(at);
                }
            }
        }
        out
    }

    /// `(the sample before the first token issued at or after from, that token's instant)`
    async fn wait_token(&self, from: Instant, to: Instant) -> Option<(Counters, Instant)> {
        loop {
            {
                let s = self.snapshot();
                for w in s.windows(2) {
                    if w[1].0 >= from && w[1].0 < to && w[1].1.tokens_issued > w[0].1.tokens_issued
                    {
                        return Some((w[0].1, w[1].0));
                    }
                }
            }
            if Instant::now() > to {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When `redis_auth_ok` first reached `target` (seen after `from`), waiting up to `limit`
    async fn wait_auths(&self, target: u64, from: Instant, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(s) = self.samples.lock() {
                if let Some((at, _)) = s
                    .iter()
                    .find(|(at, c)| *at >= from && c.redis_auth_ok >= target)
                {
                    return Some(*at);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connections of either library

/// What a subject needs of a connection: commands, and a cheap clone for the probes
trait Con: ConnectionLike + Clone + Send + Sync + 'static {}
impl Con for EntraConnection {}
impl Con for MultiplexedConnection {}

fn connection_config() -> AsyncConnectionConfig {
    // Generous timeouts for both libraries alike: opening 1000 connections on a busy 2-core
    // machine must not fail for redis-rs's 1 s default, and a probe's latency is measured,
    // not cut at 0.5 s.
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)))
}

struct Env {
    tenant: String,
    client_id: String,
    secret: String,
    redis_url: String,
    oid: String,
}

/// Ours, configured to refresh when redis-rs does (240 s before expiry)
async fn our_provider(env: &Env) -> Result<Provider, String> {
    use redis_entraid_core::config::{Config, RefreshPolicy};
    use redis_entraid_core::identity::chain::DefaultChain;
    use redis_entraid_core::identity::TokenSource;
    let config = Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .lower_bound(Duration::from_secs(240))
                .build()
                .map_err(|e| e.to_string())?,
        )
        .build()
        .map_err(|e| e.to_string())?;
    // The same variables redis-rs's credential reads; AZURE_AUTHORITY_HOST and SSL_CERT_FILE
    // come from the process environment for both (set in main before any thread).
    let mut vars = BTreeMap::new();
    vars.insert("AZURE_TENANT_ID".to_string(), env.tenant.clone());
    vars.insert("AZURE_CLIENT_ID".to_string(), env.client_id.clone());
    vars.insert("AZURE_CLIENT_SECRET".to_string(), env.secret.clone());
    if let Ok(host) = std::env::var("AZURE_AUTHORITY_HOST") {
        vars.insert("AZURE_AUTHORITY_HOST".to_string(), host);
    }
    let source = TokenSource::DefaultChain(DefaultChain::from_env(&vars));
    let identity = Identity::new(source).map_err(|e| e.to_string())?;
    Provider::builder()
        .config(config)
        .startup(Startup::Wait(Duration::from_secs(30)))
        .build_with_fetcher(identity)
        .await
        .map_err(|e| e.to_string())
}

/// Theirs, as redis-rs's docs show: a client-secret provider, `start(RetryConfig::default())`
fn their_provider(env: &Env) -> Result<EntraIdCredentialsProvider, String> {
    let mut p = EntraIdCredentialsProvider::new_client_secret(
        env.tenant.clone(),
        env.client_id.clone(),
        env.secret.clone(),
    )
    .map_err(|e| e.to_string())?;
    p.start(RetryConfig::default());
    Ok(p)
}

async fn open_many<C, F, Fut>(n: usize, open: F) -> Result<Vec<C>, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<C>>,
{
    // 32 handshakes at a time: what a pool warming up does, and the same for both.
    let results: Vec<_> = stream::iter((0..n).map(|_| open()))
        .buffer_unordered(32)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("connect failed: {e}"))
}

async fn ours_connections(
    providers: &[Provider],
    env: &Env,
    per_client: usize,
) -> Result<Vec<EntraConnection>, String> {
    let mut all = Vec::new();
    for p in providers {
        let client = EntraClient::new(
            redis::Client::open(env.redis_url.as_str()).map_err(|e| e.to_string())?,
            p.clone(),
        );
        let config = connection_config();
        all.extend(
            open_many(per_client, || {
                client.get_multiplexed_connection_with_config(&config)
            })
            .await?,
        );
    }
    Ok(all)
}

async fn their_connections(
    providers: &[EntraIdCredentialsProvider],
    env: &Env,
    per_client: usize,
) -> Result<Vec<MultiplexedConnection>, String> {
    let mut all = Vec::new();
    for p in providers {
        let client = redis::Client::open(env.redis_url.as_str()).map_err(|e| e.to_string())?;
        let config = connection_config().set_credentials_provider(p.clone());
        all.extend(
            open_many(per_client, || {
                client.get_multiplexed_async_connection_with_config(&config)
            })
            .await?,
        );
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------------
// Measurements

#[derive(Clone, Copy, Debug)]
struct Sample {
    sent: Instant,
    latency: Duration,
    ok: bool,
}

fn start_probes<C: Con>(cons: &[C], stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<Sample>>> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    for con in cons.iter().take(PROBES) {
        let mut con = con.clone();
        let samples = samples.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                let r = redis::cmd("PING").query_async::<String>(&mut con).await;
                let s = Sample {
                    sent,
                    latency: sent.elapsed(),
                    ok: r.is_ok(),
                };
                if let Ok(mut v) = samples.lock() {
                    v.push(s);
                }
            }
        });
    }
    samples
}

/// 1000 bare `AUTH`s, one per connection, all at once: the physical floor of a fan-out on
/// these connections. Timed on the emulator's clock from the first send to the N-th
/// verified `AUTH`.
async fn floor_round<C: Con>(
    cons: &[C],
    log: &CounterLog,
    user: &str,
    token: &str,
) -> Option<(Instant, Instant)> {
    let base = log.latest().redis_auth_ok;
    let t0 = Instant::now();
    let sends = cons.iter().map(|c| {
        let mut c = c.clone();
        async move {
            redis::cmd("AUTH")
                .arg(user)
                .arg(token)
                .query_async::<()>(&mut c)
                .await
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        // A refused AUTH is not verified, so the count would only be reached by another
        // subject's AUTHs: drop the round instead of timing those.
        eprintln!("floor: {failed} AUTH(s) failed; round dropped");
        return None;
    }
    // Every AUTH was answered OK, so the proxy has counted them all by now or within a
    // poll; the other subject's next rotation is 20 s away.
    let done = log
        .wait_auths(base + cons.len() as u64, t0, Duration::from_secs(5))
        .await?;
    Some((t0, done))
}

#[derive(Default)]
struct Rotation {
    issued: Option<Instant>,
    last_auth: Option<Instant>,
    /// Token requests the emulator answered within ±5 s of this rotation
    token_requests: usize,
    /// Ours only: the library's own report (arrival to each AUTH OK)
    own_report: Option<String>,
}

#[derive(Default)]
struct SubjectResult {
    initial_token_requests: usize,
    rotations: Vec<Rotation>,
    floors: Vec<(Instant, Instant)>,
    connect_window: Option<(Instant, Instant)>,
    probes: Vec<Sample>,
}

struct Args {
    connections: usize,
    rotations: usize,
    skip_economy: bool,
    /// Round trip added between every client and Redis (0: loopback)
    rtt: Duration,
}

/// One library with `n` connections through one provider: connects, probes, measures a
/// floor after connecting and after every rotation, and waits `rotations` rotations.
async fn subject(
    lib: Lib,
    env: Arc<Env>,
    log: Arc<CounterLog>,
    emu_token: Arc<String>,
    args: Arc<Args>,
    start_after: Duration,
) -> Result<SubjectResult, String> {
    tokio::time::sleep(start_after).await;
    let n = args.connections;
    let mut res = SubjectResult::default();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // The provider handles must live as long as the connections (theirs: dropping the last
    // clone aborts its refresh task; ours: dropping the last handle stops the driver).
    let (ours, theirs, probes);
    let run = async {
        match lib {
            Lib::Ours => {
                let p = our_provider(&env).await?;
                let cons = ours_connections(std::slice::from_ref(&p), &env, n).await?;
                Ok::<_, String>((Some((p, cons)), None))
            }
            Lib::Theirs => {
                let p = their_provider(&env)?;
                let cons = their_connections(std::slice::from_ref(&p), &env, n).await?;
                Ok((None, Some((p, cons))))
            }
        }
    };
    (ours, theirs) = run.await?;
    let connected = Instant::now();
    res.connect_window = Some((started, connected));
    // The first token: issued after we started.
    let (_, first) = log
        .wait_token(started, connected + Duration::from_secs(1))
        .await
        .ok_or("no token issued at start")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    res.initial_token_requests = log.token_issues(started, Instant::now()).len();
    probes = match (&ours, &theirs) {
        (Some((_, c)), _) => start_probes(c, stop.clone()),
        (_, Some((_, c))) => start_probes(c, stop.clone()),
        _ => return Err("no connections".into()),
    };
    let floor = || async {
        match (&ours, &theirs) {
            (Some((_, c)), _) => floor_round(c, &log, &env.oid, &emu_token).await,
            (_, Some((_, c))) => floor_round(c, &log, &env.oid, &emu_token).await,
            _ => None,
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    res.floors.extend(floor().await);
    // Ours only: when the provider published each new token (its driver's hand-off to the
    // connections), to split the fan-out into issue → publish and publish → last AUTH.
    let published: std::sync::Arc<Mutex<Vec<Instant>>> = Default::default();
    if let Some((p, _)) = &ours {
        let mut sub = p.subscribe();
        let _ = sub.next_if_changed();
        let published = std::sync::Arc::clone(&published);
        tokio::spawn(async move {
            while sub.changed().await.is_some() {
                if let Ok(mut v) = published.lock() {
                    v.push(Instant::now());
                }
            }
        });
    }
    // The process-wide re-AUTH window's largest size since the last rotation's report, read
    // every millisecond (a round lasts a round trip, at least a millisecond over a network).
    let window_peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    if ours.is_some() {
        let peak = window_peak.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(reauth_window(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    let mut last_token = first;
    for _ in 0..args.rotations {
        // The rotation's token: due one cycle after the last; the other subject's tokens
        // come half a cycle away, outside this window.
        let from = last_token + CYCLE - Duration::from_secs(12);
        let to = last_token + CYCLE + Duration::from_secs(12);
        let Some((before, issued)) = log.wait_token(from, to).await else {
            eprintln!("{}: no rotation within {from:?}..{to:?}", lib.name());
            break;
        };
        let target = before.redis_auth_ok + n as u64;
        let last = log
            .wait_auths(target, issued, Duration::from_secs(30))
            .await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let publish = published.lock().ok().and_then(|v| {
            v.iter()
                .find(|t| **t + Duration::from_secs(1) >= issued)
                .copied()
        });
        let own_report = ours.as_ref().and_then(|(p, _)| {
            p.fan_out_reports().last().map(|r| {
                format!(
                    "{} conns, p50 {:?}, p99 {:?}, max {:?}, {} retried; issue → publish {:?}; \
                     re-AUTH window peak {}",
                    r.connections,
                    r.p50,
                    r.p99,
                    r.max,
                    r.failed_attempts,
                    publish.map(|t| t.saturating_duration_since(issued)),
                    window_peak.swap(0, Ordering::Relaxed)
                )
            })
        });
        res.rotations.push(Rotation {
            issued: Some(issued),
            last_auth: last,
            token_requests: log
                .token_issues(
                    issued - Duration::from_secs(5),
                    issued + Duration::from_secs(5),
                )
                .len(),
            own_report,
        });
        last_token = issued;
        res.floors.extend(floor().await);
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    res.probes = probes.lock().map(|v| v.clone()).unwrap_or_default();
    drop(ours);
    drop(theirs);
    Ok(res)
}

/// Identity economy (P4): token requests at start and at the first refresh, for small
/// set-ups, each started 8 s after the previous so the emulator's log tells them apart.
struct EconomySetup {
    name: &'static str,
    lib: Lib,
    clients: usize,
    per_client: usize,
    /// One provider for every client (otherwise one provider per client)
    shared: bool,
}

const ECONOMY: &[EconomySetup] = &[
    EconomySetup {
        name: "1 connection",
        lib: Lib::Ours,
        clients: 1,
        per_client: 1,
        shared: true,
    },
    EconomySetup {
        name: "100 connections",
        lib: Lib::Ours,
        clients: 1,
        per_client: 100,
        shared: true,
    },
    EconomySetup {
        name: "4 clients x 25 connections, one shared provider",
        lib: Lib::Ours,
        clients: 4,
        per_client: 25,
        shared: true,
    },
    EconomySetup {
        name: "1 connection",
        lib: Lib::Theirs,
        clients: 1,
        per_client: 1,
        shared: true,
    },
    EconomySetup {
        name: "100 connections",
        lib: Lib::Theirs,
        clients: 1,
        per_client: 100,
        shared: true,
    },
    EconomySetup {
        name: "4 clients x 25 connections, one shared provider",
        lib: Lib::Theirs,
        clients: 4,
        per_client: 25,
        shared: true,
    },
    EconomySetup {
        name: "4 clients x 25 connections, a provider per client (the docs' pattern per client)",
        lib: Lib::Theirs,
        clients: 4,
        per_client: 25,
        shared: false,
    },
];
const ECONOMY_STAGGER: Duration = Duration::from_secs(8);

async fn economy(
    env: Arc<Env>,
    log: Arc<CounterLog>,
) -> Result<Vec<(&'static EconomySetup, usize, usize)>, String> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, setup) in ECONOMY.iter().enumerate() {
        let env = env.clone();
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let start = t0 + ECONOMY_STAGGER * i as u32;
            tokio::time::sleep_until(start.into()).await;
            let providers = if setup.shared { 1 } else { setup.clients };
            let held: Box<dyn std::any::Any + Send> = match setup.lib {
                Lib::Ours => {
                    let mut ps = Vec::new();
                    for _ in 0..providers {
                        ps.push(our_provider(&env).await?);
                    }
                    let per_client: Vec<Provider> = (0..setup.clients)
                        .map(|c| ps[c % ps.len()].clone())
                        .collect();
                    let cons = ours_connections(&per_client, &env, setup.per_client).await?;
                    Box::new((ps, cons))
                }
                Lib::Theirs => {
                    let mut ps = Vec::new();
                    for _ in 0..providers {
                        ps.push(their_provider(&env)?);
                    }
                    let per_client: Vec<EntraIdCredentialsProvider> = (0..setup.clients)
                        .map(|c| ps[c % ps.len()].clone())
                        .collect();
                    let cons = their_connections(&per_client, &env, setup.per_client).await?;
                    Box::new((ps, cons))
                }
            };
            // Keep everything alive through the first refresh (at ~60 s), then count.
            tokio::time::sleep_until((start + CYCLE + Duration::from_secs(5)).into()).await;
            let initial = log
                .token_issues(start, start + Duration::from_secs(5))
                .len();
            let refresh = log
                .token_issues(
                    start + CYCLE - Duration::from_secs(3),
                    start + CYCLE + Duration::from_secs(3),
                )
                .len();
            drop(held);
            Ok::<_, String>((setup, initial, refresh))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Statistics and report

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.1}"))
}

fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.last()) {
        (Some(a), Some(b)) => format!("{a:.1}–{b:.1}"),
        _ => "n/a".into(),
    }
}

struct Summary {
    fanouts: Vec<f64>,
    floors: Vec<f64>,
    p99_steady: Option<f64>,
    p99_rotation: Option<f64>,
    /// The same window after each floor's start: what 1000 bare AUTHs alone cost a command
    p99_floor: Option<f64>,
    /// The same window [`CONTROL_OFFSET`] before each token's issue
    p99_control: Option<f64>,
    max_in_fanout: Option<f64>,
    steady_n: usize,
    rotation_n: usize,
    probe_errors: usize,
    requests_per_rotation: Vec<usize>,
}

/// Windows where something else than steady traffic happened: connects, rotations, floors
fn disturbances(results: &[&SubjectResult]) -> Vec<(Instant, Instant)> {
    let mut w = Vec::new();
    for r in results {
        if let Some((a, b)) = r.connect_window {
            w.push((a, b + Duration::from_secs(2)));
        }
        for rot in &r.rotations {
            if let Some(i) = rot.issued {
                let end = rot.last_auth.unwrap_or(i).max(i + ROTATION_WINDOW);
                w.push((i, end));
            }
        }
        w.extend(r.floors.iter().copied());
    }
    w
}

fn summarize(r: &SubjectResult, all: &[(Instant, Instant)]) -> Summary {
    let fanouts: Vec<f64> = r
        .rotations
        .iter()
        .filter_map(|x| Some(ms(x.last_auth?.checked_duration_since(x.issued?)?)))
        .collect();
    let floors: Vec<f64> = r.floors.iter().map(|(a, b)| ms(*b - *a)).collect();
    let near = |t: Instant| {
        all.iter()
            .any(|(a, b)| t + Duration::from_millis(200) >= *a && t <= *b + Duration::from_secs(1))
    };
    let mut steady: Vec<f64> = Vec::new();
    let mut rotation: Vec<f64> = Vec::new();
    let mut fanout_max: Vec<f64> = Vec::new();
    let mut floor: Vec<f64> = Vec::new();
    let mut control: Vec<f64> = Vec::new();
    for s in &r.probes {
        if r.rotations.iter().any(|x| {
            x.issued.is_some_and(|i| {
                s.sent + CONTROL_OFFSET >= i && s.sent + CONTROL_OFFSET < i + ROTATION_WINDOW
            })
        }) {
            control.push(ms(s.latency));
        }
        if r.floors
            .iter()
            .any(|(a, _)| s.sent >= *a && s.sent < *a + ROTATION_WINDOW)
        {
            floor.push(ms(s.latency));
        }
        let in_rotation = r.rotations.iter().any(|x| {
            x.issued
                .is_some_and(|i| s.sent >= i && s.sent < i + ROTATION_WINDOW)
        });
        if in_rotation {
            rotation.push(ms(s.latency));
        } else if !near(s.sent) {
            steady.push(ms(s.latency));
        }
        let in_fanout = r.rotations.iter().any(|x| match (x.issued, x.last_auth) {
            (Some(i), Some(l)) => s.sent >= i && s.sent <= l,
            _ => false,
        });
        if in_fanout {
            fanout_max.push(ms(s.latency));
        }
    }
    Summary {
        fanouts,
        floors,
        steady_n: steady.len(),
        rotation_n: rotation.len(),
        p99_steady: percentile(&mut steady, 99.0),
        p99_rotation: percentile(&mut rotation, 99.0),
        p99_floor: percentile(&mut floor, 99.0),
        p99_control: percentile(&mut control, 99.0),
        max_in_fanout: fanout_max.iter().copied().reduce(f64::max),
        probe_errors: r.probes.iter().filter(|s| !s.ok).count(),
        requests_per_rotation: r.rotations.iter().map(|x| x.token_requests).collect(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        connections: 1000,
        rotations: 5,
        skip_economy: false,
        rtt: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |what: &str| -> Result<usize, String> {
            it.next()
                .ok_or(format!("{what} needs a value"))?
                .parse()
                .map_err(|e| format!("{what}: {e}"))
        };
        match arg.as_str() {
            "--connections" => a.connections = num("--connections")?.max(PROBES),
            "--rotations" => a.rotations = num("--rotations")?.max(1),
            "--skip-economy" => a.skip_economy = true,
            "--rtt-ms" => a.rtt = Duration::from_millis(num("--rtt-ms")? as u64),
            "-h" | "--help" => {
                return Err(
                    "usage: bench-peers [--connections N (1000)] [--rotations N (5)] \
                     [--skip-economy] [--rtt-ms MS (0: loopback)]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-peers: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = Arc::new(parse_args()?);
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    // redis-rs's credential (azure_identity) reads AZURE_AUTHORITY_HOST when it is built and
    // its TLS stack (native-tls, OpenSSL) reads SSL_CERT_FILE when its HTTP client is built,
    // both from the process environment. Set them now, before any thread exists, to the
    // emulator's port and CA file (the emulator writes `emulator-ca.pem` in its work dir).
    let work_dir = std::env::temp_dir().join(format!("bench-peers-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).map_err(|e| e.to_string())?;
    let https_port = free_port()?;
    let authority = format!("https://127.0.0.1:{https_port}");
    std::env::set_var("AZURE_AUTHORITY_HOST", &authority);
    std::env::set_var("SSL_CERT_FILE", work_dir.join("emulator-ca.pem"));

    let emu = Emulator::start_blocking(
        Emulator::builder()
            .token_lifetime(TOKEN_LIFETIME)
            .https_port(https_port)
            .work_dir(&work_dir),
    )
    .map_err(|e| e.to_string())?;
    if emu.authority_host() != authority {
        return Err(format!(
            "emulator authority {} is not {authority}",
            emu.authority_host()
        ));
    }
    let sp = &emu.identities().service_principal;
    let redis_addr = emu.redis_addr().ok_or("emulator without redis")?;
    let redis_addr = if args.rtt.is_zero() {
        redis_addr
    } else {
        let relay = network::start_relay(redis_addr, args.rtt)?;
        println!(
            "network: every client reaches Redis through a relay adding {:?} per round trip",
            args.rtt
        );
        relay
    };
    let env = Arc::new(Env {
        tenant: emu.tenant_id().to_string(),
        client_id: sp.client_id.clone(),
        secret: sp.client_secret.expose().to_string(),
        redis_url: format!("redis://{redis_addr}"),
        oid: sp.object_id.clone(),
    });
    // The floor's token: minted by the emulator (not counted as a request), same identity.
    // Two hours of life: it must outlive the whole run (a 300 s token expired mid-run and
    // every later floor AUTH was refused).
    let emu_token =
        Arc::new(emu.mint_token(
            &TokenSpec::for_oid(sp.object_id.clone()).lifetime(Duration::from_secs(7200)),
        ));

    let log = Arc::new(CounterLog::default());
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        scope.spawn(|| log.poll(&emu, &stop));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string());
        let out = rt.and_then(|rt| {
            rt.block_on(async {
                let theirs = tokio::spawn(subject(
                    Lib::Theirs,
                    env.clone(),
                    log.clone(),
                    emu_token.clone(),
                    args.clone(),
                    Duration::ZERO,
                ));
                let ours = tokio::spawn(subject(
                    Lib::Ours,
                    env.clone(),
                    log.clone(),
                    emu_token.clone(),
                    args.clone(),
                    STAGGER,
                ));
                let theirs = theirs.await.map_err(|e| e.to_string())??;
                let ours = ours.await.map_err(|e| e.to_string())??;
                let eco = if args.skip_economy {
                    Vec::new()
                } else {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    economy(env.clone(), log.clone()).await?
                };
                Ok::<_, String>((ours, theirs, eco))
            })
        });
        stop.store(true, Ordering::Relaxed);
        out
    });
    let (ours, theirs, eco) = outcome?;
    let counters = emu.counters();
    report(&args, &ours, &theirs, &eco, &counters);
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}

fn report(
    args: &Args,
    ours: &SubjectResult,
    theirs: &SubjectResult,
    eco: &[(&EconomySetup, usize, usize)],
    counters: &Counters,
) {
    let all = disturbances(&[ours, theirs]);
    let o = summarize(ours, &all);
    let t = summarize(theirs, &all);
    let n = args.connections;
    println!();
    println!("## Per library ({n} multiplexed connections each, one provider, same emulator, same process)");
    println!();
    println!("| | ours | theirs |");
    println!("|---|---|---|");
    let row = |name: &str, a: String, b: String| println!("| {name} | {a} | {b} |");
    row(
        "P2 fan-out, token issued → last AUTH verified (ms): median [spread]",
        format!(
            "{} [{}]",
            fmt_opt(median(&mut o.fanouts.clone())),
            spread(&o.fanouts)
        ),
        format!(
            "{} [{}]",
            fmt_opt(median(&mut t.fanouts.clone())),
            spread(&t.fanouts)
        ),
    );
    row(
        "rotations measured",
        format!("{} of {}", o.fanouts.len(), ours.rotations.len()),
        format!("{} of {}", t.fanouts.len(), theirs.rotations.len()),
    );
    row(
        "P2 floor, one bare AUTH per connection sent by the harness at once (ms): median [spread]",
        format!(
            "{} [{}]",
            fmt_opt(median(&mut o.floors.clone())),
            spread(&o.floors)
        ),
        format!(
            "{} [{}]",
            fmt_opt(median(&mut t.floors.clone())),
            spread(&t.floors)
        ),
    );
    row(
        "P3 PING p99, steady state (ms) [samples]",
        format!("{} [{}]", fmt_opt(o.p99_steady), o.steady_n),
        format!("{} [{}]", fmt_opt(t.p99_steady), t.steady_n),
    );
    row(
        "P3 PING p99, 1 s from each token's issue (ms) [samples]",
        format!("{} [{}]", fmt_opt(o.p99_rotation), o.rotation_n),
        format!("{} [{}]", fmt_opt(t.p99_rotation), t.rotation_n),
    );
    row(
        "P3 control: PING p99, 1 s windows 15 s before each issue (ms)",
        fmt_opt(o.p99_control),
        fmt_opt(t.p99_control),
    );
    row(
        "P3 reference: PING p99, 1 s from each floor's start (ms)",
        fmt_opt(o.p99_floor),
        fmt_opt(t.p99_floor),
    );
    row(
        "P3 PING max while the fan-out ran (ms)",
        fmt_opt(o.max_in_fanout),
        fmt_opt(t.max_in_fanout),
    );
    row(
        "probe PINGs failed",
        o.probe_errors.to_string(),
        t.probe_errors.to_string(),
    );
    row(
        "P4 token requests at start / per rotation",
        format!(
            "{} / {:?}",
            ours.initial_token_requests, o.requests_per_rotation
        ),
        format!(
            "{} / {:?}",
            theirs.initial_token_requests, t.requests_per_rotation
        ),
    );
    for (i, r) in ours.rotations.iter().enumerate() {
        if let Some(s) = &r.own_report {
            println!("\nours, rotation {}: Provider::fan_out_reports (client clock, arrival → AUTH OK): {s}", i + 1);
        }
    }
    if !eco.is_empty() {
        println!();
        println!("## P4 identity economy (token requests the emulator answered)");
        println!();
        println!("| library | set-up | at start | at the first refresh |");
        println!("|---|---|---|---|");
        for (s, initial, refresh) in eco {
            println!("| {} | {} | {initial} | {refresh} |", s.lib.name(), s.name);
        }
    }
    let om = median(&mut o.fanouts.clone());
    let tm = median(&mut t.fanouts.clone());
    let of = median(&mut o.floors.clone());
    let r_theirs = ratio(om, tm);
    let r_floor = ratio(om, of);
    let r_o3 = ratio(o.p99_rotation, o.p99_steady);
    let r_t3 = ratio(t.p99_rotation, t.p99_steady);
    let ours_one = {
        let mut v: Vec<usize> = o.requests_per_rotation.clone();
        v.extend(
            eco.iter()
                .filter(|(s, _, _)| s.lib == Lib::Ours)
                .map(|(_, _, r)| *r),
        );
        (!v.is_empty()).then(|| v.iter().all(|&x| x == 1))
    };
    println!();
    println!("## Ratios and goals");
    println!();
    println!("| ratio | value | goal | verdict |");
    println!("|---|---|---|---|");
    println!(
        "| P2 fan-out ours / theirs (medians) | {} | ≤ 0.5 | {} |",
        fmt_ratio(r_theirs),
        verdict(r_theirs.map(|x| x <= 0.5))
    );
    println!(
        "| P2 fan-out ours / floor (medians) | {} | ≤ 2 | {} |",
        fmt_ratio(r_floor),
        verdict(r_floor.map(|x| x <= 2.0))
    );
    println!(
        "| P2 fan-out theirs / floor (medians) | {} | (context) | |",
        fmt_ratio(ratio(tm, median(&mut t.floors.clone())))
    );
    println!(
        "| P3 ours: p99 rotation / p99 steady | {} | ≤ 1.1 | {} |",
        fmt_ratio(r_o3),
        verdict(r_o3.map(|x| x <= 1.1))
    );
    println!(
        "| P3 theirs: p99 rotation / p99 steady | {} | ≤ 1.1 | {} |",
        fmt_ratio(r_t3),
        verdict(r_t3.map(|x| x <= 1.1))
    );
    println!(
        "| P3 control: p99 quiet 1 s windows / p99 steady (ours; theirs) | {}; {} | (context: the noise of a 1 s window) | |",
        fmt_ratio(ratio(o.p99_control, o.p99_steady)),
        fmt_ratio(ratio(t.p99_control, t.p99_steady))
    );
    println!(
        "| P3 p99 rotation / p99 control (same-length quiet windows; ours; theirs) | {}; {} | (context: rotation against quiet windows of equal size) | |",
        fmt_ratio(ratio(o.p99_rotation, o.p99_control)),
        fmt_ratio(ratio(t.p99_rotation, t.p99_control))
    );
    println!(
        "| P3 max PING while the fan-out ran / p99 steady (ours; theirs) | {}; {} | (context: the worst stall) | |",
        fmt_ratio(ratio(o.max_in_fanout, o.p99_steady)),
        fmt_ratio(ratio(t.max_in_fanout, t.p99_steady))
    );
    println!(
        "| P3 floor: p99 during the bare AUTHs / p99 steady (ours' connections) | {} | (context) | |",
        fmt_ratio(ratio(o.p99_floor, o.p99_steady))
    );
    println!(
        "| P4 ours: token requests per refresh, every set-up | {} | 1 | {} |",
        match ours_one {
            Some(true) => "1",
            Some(false) => "≠ 1 somewhere",
            None => "n/a",
        },
        verdict(ours_one)
    );
    println!();
    println!(
        "emulator totals: {} token requests, {} AUTH ok, {} AUTH refused, {} closed for expiry",
        counters.entra_requests,
        counters.redis_auth_ok,
        counters.redis_auth_failed,
        counters.redis_closed_for_expiry
    );
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.2}"))
}
