//! Prints a day of token refreshes as the core plans them, on a simulated clock
//!
//! A service principal gets 1-hour tokens; from 05:00 to 05:45 the identity endpoint
//! answers 503, then recovers. Run:
//!
//! ```text
//! cargo run -p redis-entraid-core --features testing --example schedule
//! ```

use std::time::{Duration, Instant};

use redis_entraid_core::config::Config;
use redis_entraid_core::error::ResponseError;
use redis_entraid_core::event::{Action, Event};
use redis_entraid_core::testing::{Harness, Reply};

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

// An example reads the clock once to start its simulation; the core never does.
#[allow(clippy::disallowed_methods)]
fn main() {
    let outage = Duration::from_secs(5 * 3600)..Duration::from_secs(5 * 3600 + 45 * 60);
    let mut h = Harness::new(Instant::now(), Config::default(), move |ctx| {
        if outage.contains(&ctx.elapsed) {
            Reply::fail(ResponseError::new("identity endpoint unavailable", true).with_status(503))
        } else {
            Reply::token(3600)
        }
    });
    h.run_for(Duration::from_secs(24 * 3600));
    let start = h.start;
    for (at, action) in &h.trace {
        let line = match action {
            Action::FetchToken { id, attempt, .. } => {
                format!("fetch #{} (attempt {attempt})", id.0)
            }
            Action::Reauthenticate {
                generation,
                credentials,
            } => {
                format!(
                    "re-AUTH every connection as {} (generation {})",
                    credentials.username(),
                    generation.0
                )
            }
            Action::Event(Event::Refreshed {
                expires_at,
                refresh_at,
                ..
            }) => format!(
                "  token valid until {}, next refresh at {}",
                hms(*expires_at - start),
                hms(*refresh_at - start)
            ),
            Action::Event(Event::FetchFailed {
                attempt,
                error,
                next_attempt_at,
                ..
            }) => {
                format!(
                    "  failed (attempt {attempt}): {error}; next try at {}",
                    hms(*next_attempt_at - start)
                )
            }
            Action::Event(Event::RetriesExhausted { attempts, .. }) => {
                format!("  {attempts} failures in a row: alerting, still retrying every 30 s")
            }
            Action::Event(Event::Expired { generation }) => {
                format!("  TOKEN {} EXPIRED", generation.0)
            }
            Action::Event(other) => format!("  {other:?}"),
            _ => continue,
        };
        println!("{}  {line}", hms(*at));
    }
    let expired = h.count_events(|e| matches!(e, Event::Expired { .. }));
    let failures = h.count_events(|e| matches!(e, Event::FetchFailed { .. }));
    println!(
        "\n24 h simulated: {} fetches, {} failed, {} tokens pushed, {} expiries",
        h.fetches.len(),
        failures,
        h.reauths.len(),
        expired
    );
}
