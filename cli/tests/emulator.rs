//! `redis-entraid emulator` prints the environment a client needs, and `redis-entraid demo`
//! keeps its connections through rotations and an identity outage

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::io::{BufRead, BufReader};

use common::{assert_no_token, run, spawn};

#[test]
fn the_printed_exports_are_enough_for_a_client_to_get_a_token() {
    let mut child = spawn(
        &[
            "emulator",
            "--no-redis",
            "--token-lifetime",
            "120",
            "--duration",
            "30s",
            "--fault",
            "503@entra",
        ],
        &[],
    );
    let stdout = child.stdout.take().unwrap();
    let mut vars = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("# control API") {
            break;
        }
        if let Some(export) = line.strip_prefix("export ") {
            let (k, v) = export.split_once('=').unwrap();
            vars.push((k.to_owned(), v.trim_matches('\'').to_owned()));
        }
    }
    let names: Vec<_> = vars.iter().map(|(k, _)| k.as_str()).collect();
    for needed in [
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "AZURE_CLIENT_SECRET",
        "SSL_CERT_FILE",
    ] {
        assert!(names.contains(&needed), "{names:?}");
    }
    // The injected fault hits the first Entra request; the second one works.
    let first = run(&["token", "--source", "secret", "--json"], &vars);
    assert_eq!(first.code, 1, "{}", first.all());
    assert!(first.stderr.contains("503"), "{}", first.stderr);
    let second = run(&["token", "--source", "secret", "--json"], &vars);
    assert_eq!(second.code, 0, "{}", second.all());
    let v: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
    assert_eq!(v["source"], "client secret");
    assert!(v["lifetime_left_s"].as_i64().unwrap() <= 120);
    assert_no_token(&second.all());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_demo_runs_through_rotations_and_an_outage_without_a_failed_command() {
    let out = run(&["demo", "--duration", "8s"], &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("the identity endpoint will now fail twice"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("new token #2:"), "{}", out.stdout);
    let row = |label: &str| -> u64 {
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("{label}: {}", out.stdout))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(row("commands failed"), 0);
    assert_eq!(row("connections lost"), 0);
    assert_eq!(row("closed for expiry"), 0);
    assert!(row("token rotations") >= 1);
    assert_eq!(row("identity faults served"), 2);
    assert_no_token(&out.all());
}
