//! The main job, on a laptop: a blocking Redis client that authenticates with a managed
//! identity and keeps four connections alive through several token rotations
//!
//! Everything Azure does is played by the local emulator: an IMDS endpoint issuing six-second
//! tokens, and a proxy in front of a real redis-server that closes any connection whose token
//! expires. Halfway through, the identity endpoint fails twice; the provider retries.
//!
//! ```text
//! bash scripts/demo.sh          # installs redis-server when missing, then runs this
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis_entraid_blocking::redis_sync::EntraClient;
use redis_entraid_blocking::{Provider, Startup};
use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::event::Event;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource;
use redis_entraid_emulator::{Emulator, Endpoint, Fault};

const CONNECTIONS: usize = 4;
const RUN_FOR: Duration = Duration::from_secs(24);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let at = move || format!("[{:>6.2}s]", t0.elapsed().as_secs_f64());

    let emu = Emulator::start_blocking(Emulator::builder().token_lifetime(Duration::from_secs(6)))?;
    println!(
        "{} emulator up: IMDS at {}, Redis proxy at {}",
        at(),
        emu.imds_endpoint(),
        emu.redis_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    println!(
        "{} tokens live 6 s; the proxy closes any connection whose token expires",
        at()
    );

    // What an Azure VM's environment would hold, pointed at the emulator.
    let env: BTreeMap<String, String> = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
        emu.imds_endpoint(),
    )]
    .into();
    let identity = ManagedIdentity::detect(&env, ManagedIdentityId::SystemAssigned)?;
    let config = Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .ratio(0.6)
                .lower_bound(Duration::from_secs(2))
                .min_interval(Duration::from_millis(500))
                .build()?,
        )
        .retry(
            RetryPolicy::builder()
                .initial_delay(Duration::from_millis(200))
                .max_delay(Duration::from_secs(1))
                .build()?,
        )
        .request_timeout(Duration::from_secs(2))
        .build()?;
    let provider = Provider::builder()
        .config(config)
        .startup(Startup::Wait(Duration::from_secs(10)))
        .build(TokenSource::ManagedIdentity(identity))?;

    if let Some((generation, credentials)) = provider.current() {
        println!(
            "{} token #{} from the managed identity; Redis username (oid) {}",
            at(),
            generation.0,
            credentials.username()
        );
    }
    let events = provider.events();
    let printer = thread::spawn(move || {
        for event in events {
            match event {
                Event::Refreshed {
                    generation,
                    expires_at,
                    refresh_at,
                } => println!(
                    "{} token #{} arrived: valid {:.1} s more, next refresh in {:.1} s",
                    at(),
                    generation.0,
                    expires_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64(),
                    refresh_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                ),
                Event::FetchFailed {
                    attempt,
                    error,
                    next_attempt_at,
                    ..
                } => println!(
                    "{} token request failed (attempt {attempt}): {error}; retrying in {:.1} s",
                    at(),
                    next_attempt_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                ),
                Event::Stopped => break,
                other => println!("{} {other:?}", at()),
            }
        }
    });

    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", emu.redis_addr().ok_or("no proxy")?))?,
        provider.clone(),
    );
    let commands = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let reauths = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for n in 1..=CONNECTIONS {
        let mut conn = client.get_connection()?;
        println!(
            "{} connection {n} authenticated as {} (token #{})",
            at(),
            provider
                .credentials()
                .map(|c| c.username().to_owned())
                .unwrap_or_default(),
            conn.generation().map_or(0, |g| g.0)
        );
        let (commands, failures, reauths, stop) = (
            Arc::clone(&commands),
            Arc::clone(&failures),
            Arc::clone(&reauths),
            Arc::clone(&stop),
        );
        workers.push(thread::spawn(move || {
            let mut seen = conn.generation();
            while !stop.load(Ordering::Relaxed) {
                let result: redis::RedisResult<u64> = redis::cmd("INCR")
                    .arg(format!("demo:counter:{n}"))
                    .query(&mut conn);
                match result {
                    Ok(_) => commands.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        println!("{} connection {n}: command failed: {e}", at());
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                if conn.generation() != seen {
                    seen = conn.generation();
                    reauths.fetch_add(1, Ordering::Relaxed);
                    println!(
                        "{} connection {n} re-authenticated with token #{}",
                        at(),
                        seen.map_or(0, |g| g.0)
                    );
                }
                // Connection 4 is mostly idle: it works once every 8 s, longer than a token
                // lives, and is kept authenticated in the background meanwhile.
                thread::sleep(if n == CONNECTIONS {
                    Duration::from_secs(8)
                } else {
                    Duration::from_millis(100)
                });
            }
        }));
    }

    thread::sleep(RUN_FOR / 2);
    println!(
        "{} the identity endpoint will now fail twice with 503",
        at()
    );
    emu.faults()
        .inject(Fault::status(503).times(2).only(Endpoint::Imds));
    thread::sleep(RUN_FOR / 2);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }

    let counters = emu.counters();
    let rotations = provider.current().map_or(0, |(g, _)| g.0.saturating_sub(1));
    println!("\nsummary after {:.0} s:", RUN_FOR.as_secs_f64());
    println!("  token rotations:               {rotations}");
    println!(
        "  re-authentications seen:       {}",
        reauths.load(Ordering::Relaxed)
    );
    println!(
        "  AUTH accepted by the proxy:    {}",
        counters.redis_auth_ok
    );
    println!(
        "  commands run:                  {}",
        commands.load(Ordering::Relaxed)
    );
    println!(
        "  commands failed:               {}",
        failures.load(Ordering::Relaxed)
    );
    println!(
        "  identity faults served:        {}",
        counters.faults_served
    );
    println!(
        "  connections closed for expiry: {}",
        counters.redis_closed_for_expiry
    );
    provider.shutdown();
    drop(client);
    drop(provider);
    let _ = printer.join();
    if failures.load(Ordering::Relaxed) > 0 || counters.redis_closed_for_expiry > 0 || rotations < 3
    {
        return Err("the demo saw a failure".into());
    }
    Ok(())
}
