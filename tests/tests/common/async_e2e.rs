//! The async end-to-end workload, written once for tokio and async-std/smol: per identity
//! flow, a provider, ten redis-rs multiplexed connections opened through the runtime's
//! `EntraClient` running SET/GET (one also PUBLISHes) and a RESP3 subscriber that must receive
//! every message, for the whole scenario while six-second tokens rotate; then the report, the
//! fan-out lines and the assertions
//!
//! A runtime supplies what differs through [`AsyncRuntime`]: how its provider is built, how a
//! connection is opened, how a task is spawned and how it sleeps. (The blocking runtime's
//! `blocking_e2e.rs` runs threads and r2d2 pools and shares only `redis_entraid_tests`.)

use std::future::Future;
use std::ops::DerefMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, PushKind};
use redis_entraid_core::fan_out::FanOutReport;
use redis_entraid_emulator::Emulator;
use redis_entraid_tests::{Flow, Report, SCENARIO_DURATION, TOKEN_LIFETIME};

/// Connections running commands per flow (the subscriber comes on top)
pub(crate) const CONNECTIONS: usize = 10;

/// How one async runtime runs the workload
pub(crate) trait AsyncRuntime: 'static {
    type Provider: Clone;
    type Client;
    type Connection: ConnectionLike + DerefMut<Target = MultiplexedConnection> + Send + 'static;
    type Events;
    type Task: Future<Output = u64>;

    /// A provider for `flow` on `emu`'s identity endpoints (trusting its CA), waiting up to
    /// 15 s for the first token with [`redis_entraid_tests::e2e_config`]
    fn provider(flow: Flow, emu: &Emulator) -> impl Future<Output = Self::Provider>;
    /// The runtime's `EntraClient` for `url` over `provider`
    fn client(url: &str, provider: Self::Provider) -> Self::Client;
    fn connect(
        client: &Self::Client,
        config: &AsyncConnectionConfig,
    ) -> impl Future<Output = redis::RedisResult<Self::Connection>>;
    fn events(provider: &Self::Provider) -> Self::Events;
    /// How many [`Event::FetchFailed`](redis_entraid_core::event::Event::FetchFailed) are
    /// queued in `events`
    fn fetch_failures(events: &mut Self::Events) -> u64;
    fn generation(provider: &Self::Provider) -> u64;
    fn fan_out_reports(provider: &Self::Provider) -> Vec<FanOutReport>;
    fn spawn(task: impl Future<Output = u64> + Send + 'static) -> Self::Task;
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The [`AsyncRuntime`] methods both runtimes spell alike: their `EntraClient`, connection,
/// provider and event receiver have the same methods under the same names
macro_rules! same_in_both_runtimes {
    () => {
        fn client(url: &str, provider: Self::Provider) -> Self::Client {
            <Self::Client>::new(redis::Client::open(url).unwrap(), provider)
        }

        async fn connect(
            client: &Self::Client,
            config: &redis::AsyncConnectionConfig,
        ) -> redis::RedisResult<Self::Connection> {
            client.get_multiplexed_connection_with_config(config).await
        }

        fn events(provider: &Self::Provider) -> Self::Events {
            provider.events()
        }

        fn fetch_failures(events: &mut Self::Events) -> u64 {
            let mut failures = 0;
            while let Ok(event) = events.try_recv() {
                failures += u64::from(matches!(
                    event,
                    redis_entraid_core::event::Event::FetchFailed { .. }
                ));
            }
            failures
        }

        fn generation(provider: &Self::Provider) -> u64 {
            provider.current().map_or(0, |(g, _)| g.0)
        }

        fn fan_out_reports(
            provider: &Self::Provider,
        ) -> Vec<redis_entraid_core::fan_out::FanOutReport> {
            provider.fan_out_reports()
        }
    };
}
pub(crate) use same_in_both_runtimes;

/// What one flow's workload saw
pub(crate) struct FlowResult {
    pub(crate) report: Report,
    pub(crate) published: u64,
    pub(crate) received: u64,
    pub(crate) fan_out: Vec<FanOutReport>,
}

/// SET then GET on `key` until `deadline`, counting successes and failures; connection 0 also
/// publishes on `channel` every fourth round; returns how many messages it published
#[allow(clippy::too_many_arguments)] // the worker's whole brief, as plain values
async fn worker<R: AsyncRuntime>(
    mut conn: R::Connection,
    w: usize,
    key: String,
    channel: String,
    name: &'static str,
    deadline: Instant,
    commands: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
) -> u64 {
    let mut i = 0u64;
    let mut published = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let result: redis::RedisResult<u64> = async {
            redis::cmd("SET")
                .arg(&key)
                .arg(i)
                .query_async::<()>(&mut conn)
                .await?;
            redis::cmd("GET").arg(&key).query_async(&mut conn).await
        }
        .await;
        match result {
            Ok(got) if got == i => commands.fetch_add(1, Ordering::Relaxed),
            other => {
                if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("{name}: command failed: {other:?}");
                }
                0
            }
        };
        if w == 0 && i.is_multiple_of(4) {
            match redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(i)
                .query_async::<u64>(&mut conn)
                .await
            {
                Ok(_) => published += 1,
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{name}: publish failed: {e}");
                }
            }
        }
        R::sleep(Duration::from_millis(25)).await;
    }
    published
}

/// Runs `flow`'s workload for `duration`
pub(crate) async fn run_flow<R: AsyncRuntime>(
    flow: Flow,
    emu: &Emulator,
    duration: Duration,
) -> FlowResult {
    let name = flow.name;
    let provider = R::provider(flow, emu).await;
    let mut events = R::events(&provider);
    let addr = emu.redis_addr().expect("proxy address");
    let client = R::client(&format!("redis://{addr}/?protocol=resp3"), provider.clone());
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let commands = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;

    // A RESP3 subscriber: it must receive every message published while tokens rotate.
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let channel = format!("e2e:{name}");
    let sub_config =
        config
            .clone()
            .set_push_sender(move |info: redis::PushInfo| -> Result<(), ()> {
                if info.kind == PushKind::Message {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            });
    let mut subscriber = R::connect(&client, &sub_config).await.unwrap();
    subscriber.subscribe(&channel).await.unwrap();

    let mut tasks = Vec::new();
    for w in 0..CONNECTIONS {
        let conn = R::connect(&client, &config).await.unwrap();
        tasks.push(R::spawn(worker::<R>(
            conn,
            w,
            format!("{name}:{w}"),
            channel.clone(),
            name,
            deadline,
            Arc::clone(&commands),
            Arc::clone(&failures),
        )));
    }
    let mut published = 0;
    for task in tasks {
        published += task.await;
    }
    // Let the last messages arrive.
    R::sleep(Duration::from_millis(300)).await;
    let fetch_failures = R::fetch_failures(&mut events);
    let generation = R::generation(&provider);
    // Taken while the subscriber still lives: it re-authenticated with every rotation.
    let fan_out = R::fan_out_reports(&provider);
    drop(subscriber);
    FlowResult {
        report: Report {
            name: name.to_owned(),
            connections: CONNECTIONS + 1,
            commands: commands.load(Ordering::Relaxed),
            failures: failures.load(Ordering::Relaxed),
            rotations: generation.saturating_sub(1),
            fetch_failures,
        },
        published,
        received: received.load(Ordering::Relaxed),
        fan_out,
    }
}

/// Prints every flow's report and fan-out and the emulator's counters, then asserts: no
/// command failed, every complete rotation reached every connection, tokens rotated at least
/// once per lifetime, the publisher published and every message arrived, and the proxy never
/// closed a connection for an expired token
pub(crate) fn report_and_check(title: &str, emu: &Emulator, results: &[FlowResult]) {
    let counters = emu.counters();
    println!("\n{title}");
    for r in results {
        println!(
            "  {}  pub/sub {}/{} received",
            r.report, r.received, r.published
        );
        print_fan_out(&r.fan_out);
    }
    println!(
        "  emulator: {} connections accepted, {} AUTH ok, {} AUTH failed, {} closed for expiry",
        counters.redis_connections_accepted,
        counters.redis_auth_ok,
        counters.redis_auth_failed,
        counters.redis_closed_for_expiry
    );
    for r in results {
        let report = &r.report;
        assert_eq!(report.failures, 0, "{report}");
        // Every rotation reached every connection (the subscriber included); the last one may
        // have arrived while the workers were ending, so it is not counted.
        let (_, complete) = r.fan_out.split_last().expect("at least one rotation");
        for f in complete {
            assert_eq!(f.connections, report.connections, "{}: {f:?}", report.name);
        }
        assert!(
            report.rotations >= SCENARIO_DURATION.as_secs() / TOKEN_LIFETIME.as_secs(),
            "{report}"
        );
        assert!(
            r.published > 50,
            "{}: {} published",
            report.name,
            r.published
        );
        assert_eq!(
            r.received, r.published,
            "{}: every published message arrived",
            report.name
        );
    }
    assert_eq!(counters.redis_closed_for_expiry, 0);
}

/// Runs the futures concurrently on this task and returns their outputs in order
pub(crate) async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

/// One line per flow: the worst of its rotations, then each rotation
fn print_fan_out(reports: &[FanOutReport]) {
    let worst = |f: fn(&FanOutReport) -> Duration| reports.iter().map(f).max().unwrap_or_default();
    let least_margin = reports.iter().filter_map(|r| r.min_margin).min();
    let retried: u64 = reports.iter().map(|r| r.failed_attempts).sum();
    println!(
        "    fan-out over {} rotations: worst p50 {:?}, worst p99 {:?}, max {:?}, least margin left {:?}, {retried} retried AUTHs",
        reports.len(),
        worst(|r| r.p50),
        worst(|r| r.p99),
        worst(|r| r.max),
        least_margin,
    );
    for r in reports {
        println!(
            "      generation {}: {} connections, p50 {:?}, p99 {:?}, max {:?}, margin {:?}",
            r.generation.0, r.connections, r.p50, r.p99, r.max, r.min_margin
        );
    }
}
