//! `redis-entraid watch --prometheus`: every documented metric is served, and moves as the
//! emulator rotates tokens, fails identity requests and refuses re-authentications

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{closed_port, spawn, start};
use redis_entraid_core::metrics::{MetricKind, METRICS};
use redis_entraid_emulator::{Emulator, Endpoint, Fault};

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The sum of the samples of `name` whose labels contain `label` (e.g. `outcome="ok"`)
fn value(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What must have moved, as (metric, label filter, description)
fn missing(text: &str) -> Vec<String> {
    let moved = [
        ("redis_entraid_token_requests_total", "outcome=\"ok\""),
        ("redis_entraid_token_requests_total", "outcome=\"error\""),
        ("redis_entraid_fetch_failures_total", "kind=\"response\""),
        ("redis_entraid_retries_exhausted_total", ""),
        ("redis_entraid_rotations_total", ""),
        ("redis_entraid_token_expirations_total", ""),
        ("redis_entraid_reauth_total", "outcome=\"ok\""),
        ("redis_entraid_reauth_total", "outcome=\"failed\""),
        ("redis_entraid_reauth_failures_total", "kind=\"wrongpass\""),
        ("redis_entraid_token_remaining_seconds", ""),
        ("redis_entraid_status", "state=\"valid\""),
        (
            "redis_entraid_fetch_duration_seconds_count",
            "outcome=\"ok\"",
        ),
        (
            "redis_entraid_fetch_duration_seconds_count",
            "outcome=\"error\"",
        ),
        ("redis_entraid_reauth_fanout_seconds_count", ""),
    ];
    moved
        .iter()
        .filter(|(name, label)| value(text, name, label) <= 0.0)
        .map(|(name, label)| format!("{name}{{{label}}}"))
        .collect()
}

#[test]
fn every_documented_metric_is_served_and_moves_as_the_emulator_rotates_and_fails() {
    let env = start(
        Emulator::builder().token_lifetime(Duration::from_secs(4)),
        "metrics",
    );
    let vars = env.flows()[3].vars.clone();
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let url = env.plain_url();
    let mut child = spawn(
        &[
            "watch",
            &url,
            "--source",
            "imds",
            "--connections",
            "2",
            "--duration",
            "60s",
            "--interval",
            "100ms",
            "--timeout",
            "2s",
            "--prometheus",
            &addr,
            "--refresh-ratio",
            "0.5",
            "--lower-bound",
            "1s",
            "--min-interval",
            "500ms",
            "--retry-initial",
            "100ms",
            "--retry-max",
            "300ms",
        ],
        &vars,
    );
    let deadline = Instant::now() + Duration::from_secs(50);
    let wait_for = |what: &str, ok: &dyn Fn(&str) -> bool| -> String {
        loop {
            if let Some(text) = scrape(port) {
                if ok(&text) {
                    return text;
                }
                if Instant::now() > deadline {
                    panic!("{what} never happened; metrics:\n{text}");
                }
            } else if Instant::now() > deadline {
                panic!("no metrics served on {port}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("a rotation", &|t| {
        value(t, "redis_entraid_rotations_total", "") >= 1.0
    });

    // An identity outage longer than the token's life, then two refused re-authentications.
    env.emu
        .faults()
        .inject(Fault::status(503).times(25).only(Endpoint::Imds));
    env.emu.refuse_next_auths(2);
    let text = wait_for("every metric moving", &|t| missing(t).is_empty());

    for m in METRICS {
        let served = match m.kind {
            MetricKind::Histogram => format!("{}_count", m.name),
            _ => m.name.to_owned(),
        };
        assert!(text.contains(&served), "{} not served:\n{text}", m.name);
        assert!(
            text.contains(&format!("# HELP {} ", m.name)),
            "{} has no help",
            m.name
        );
    }
    // This tool's own subscriber keeps up, so nothing is dropped; the counter is served at 0.
    assert_eq!(value(&text, "redis_entraid_events_dropped_total", ""), 0.0);
    common::assert_no_token(&text);
    let _ = child.kill();
    let _ = child.wait();
}
