//! `redis-entraid watch` over the emulator with short tokens: every rotation is shown, and the
//! summary agrees with what the emulator counted

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::Duration;

use common::{assert_no_token, run, start};
use redis_entraid_emulator::Emulator;

const CONNECTIONS: u64 = 3;

/// Settings for 3-second tokens: refresh at half-life, never closer than 1 s to expiry
const SHORT_TOKENS: [&str; 8] = [
    "--refresh-ratio",
    "0.5",
    "--lower-bound",
    "1s",
    "--min-interval",
    "500ms",
    "--retry-initial",
    "100ms",
];

#[test]
fn watch_shows_every_rotation_and_its_summary_matches_the_emulators_counters() {
    let env = start(
        Emulator::builder().token_lifetime(Duration::from_secs(3)),
        "watch",
    );
    let vars = env.flows()[3].vars.clone();
    let mut args = vec![
        "watch",
        &*Box::leak(env.plain_url().into_boxed_str()),
        "--source",
        "imds",
        "--connections",
        "3",
        "--duration",
        "10s",
        "--interval",
        "100ms",
        "--json",
    ];
    args.extend_from_slice(&SHORT_TOKENS);
    let out = run(&args, &vars);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_no_token(&out.all());
    let json_start = out.stdout.find("\n{").map_or(0, |i| i + 1);
    let (lines, json) = out.stdout.split_at(json_start);
    let summary: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));

    // One line per token, numbered 1..=N with none missing.
    let arrived: Vec<u64> = lines
        .lines()
        .filter_map(|l| l.split("new token #").nth(1))
        .map(|rest| rest.split(':').next().unwrap().parse().unwrap())
        .collect();
    let tokens = summary["tokens"].as_u64().unwrap();
    assert_eq!(arrived, (1..=tokens).collect::<Vec<_>>(), "{}", out.stdout);
    // 10 s of 3-second tokens refreshed at half-life: a rotation every ~1.5 s.
    assert!(tokens >= 5, "{}", out.stdout);
    assert_eq!(summary["rotations"].as_u64().unwrap(), tokens - 1);

    let counters = env.emu.counters();
    // Every token the emulator issued was shown, except one whose request was still in flight
    // when the run stopped (its answer reaches a provider that has shut down).
    let in_flight = counters.tokens_issued - tokens;
    assert!(in_flight <= 1, "{counters:?} {summary}");
    assert_eq!(
        counters.imds_requests,
        tokens + in_flight + summary["fetch_failures"].as_u64().unwrap(),
        "{counters:?} {summary}"
    );
    assert_eq!(summary["command_failures"], 0, "{}", out.stdout);
    assert_eq!(summary["connections_lost"], 0);
    assert_eq!(summary["expirations"], 0);
    assert_eq!(counters.redis_closed_for_expiry, 0);
    // Every AUTH the proxy accepted is a connection's first one or a re-authentication the
    // summary counted.
    assert_eq!(
        counters.redis_auth_ok,
        CONNECTIONS + summary["reauths_ok"].as_u64().unwrap(),
        "{counters:?} {summary}"
    );
    assert!(summary["commands"].as_u64().unwrap() > 0);
}

#[test]
fn watch_reports_identity_failures_and_a_bad_url_cleanly() {
    let out = run(&["watch", "redis://", "--duration", "1s"], &[]);
    assert_eq!(out.code, 2, "{}", out.all());
    common::assert_clean_error(&out);
}
