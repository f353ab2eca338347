//! `redis-entraid check` against the emulator: a clean pass for every flow, and the right
//! verdict, advice and exit status for each failure a user meets

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::time::Duration;

use common::{assert_clean_error, assert_no_token, default_env, run, start};
use redis_entraid_emulator::Emulator;
use serde_json::Value;

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

fn check_json(url: &str, extra: &[&str], vars: &[(String, String)]) -> (i32, Value, String) {
    let mut args = vec!["check", url, "--json", "--timeout", "5s"];
    args.extend_from_slice(extra);
    let out = run(&args, vars);
    assert_no_token(&out.all());
    let report: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    (out.code, report, out.all())
}

#[test]
fn check_passes_every_step_over_tls_for_every_flow() {
    let env = default_env("check-flows");
    for flow in env.flows() {
        let mut vars = flow.vars.clone();
        vars.push(env.ca());
        let (code, report, all) = check_json(&env.tls_url(), &["--source", flow.source], &vars);
        assert_eq!(code, 0, "{}: {all}", flow.source);
        assert_eq!(report["ok"], true);
        for name in [
            "identity", "token", "dns", "tcp", "tls", "auth", "ping", "re-auth",
        ] {
            assert_eq!(
                step(&report, name)["verdict"],
                "ok",
                "{} {name}: {all}",
                flow.source
            );
        }
        assert!(step(&report, "token")["summary"]
            .as_str()
            .unwrap()
            .contains(&flow.oid));
    }
}

#[test]
fn the_human_report_shows_each_step_with_a_verdict_and_timing() {
    let env = default_env("check-human");
    let mut vars = env.flows()[3].vars.clone();
    vars.push(env.ca());
    let out = run(&["check", &env.tls_url(), "--source", "imds"], &vars);
    assert_eq!(out.code, 0, "{}", out.all());
    for name in [
        "identity", "token", "dns", "tcp", "tls", "auth", "ping", "re-auth",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{name}: {}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("all checks passed"));
    assert_no_token(&out.all());
}

#[test]
fn a_token_signed_by_another_key_is_refused_and_the_advice_names_the_oid_to_add() {
    // Identity from one emulator (its own signing key), Redis from another.
    let issuer =
        Emulator::start_blocking(Emulator::builder().fresh_signing_key().without_redis()).unwrap();
    let redis = default_env("check-wrongpass");
    let vars = vec![
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
            issuer.imds_endpoint(),
        ),
        redis.ca(),
    ];
    let (code, report, all) = check_json(&redis.tls_url(), &["--source", "imds"], &vars);
    assert_eq!(code, 1, "{all}");
    let auth = step(&report, "auth");
    assert_eq!(auth["verdict"], "fail", "{all}");
    assert!(
        auth["summary"].as_str().unwrap().contains("WRONGPASS"),
        "{all}"
    );
    let advice = auth["advice"].as_str().unwrap();
    assert!(advice.contains(issuer.default_oid()), "{advice}");
    assert!(advice.contains("access-policy user"), "{advice}");
    assert_eq!(step(&report, "ping")["verdict"], "skip");
}

#[test]
fn a_token_for_another_scope_fails_at_the_token_step_with_scope_advice() {
    let env = default_env("check-scope");
    let mut vars = env.flows()[3].vars.clone();
    vars.push(env.ca());
    let (code, report, all) = check_json(
        &env.tls_url(),
        &[
            "--source",
            "imds",
            "--scope",
            "https://management.azure.com/.default",
        ],
        &vars,
    );
    assert_eq!(code, 1, "{all}");
    let token = step(&report, "token");
    assert_eq!(token["verdict"], "fail");
    assert!(token["summary"]
        .as_str()
        .unwrap()
        .contains("https://management.azure.com"));
    assert!(token["advice"]
        .as_str()
        .unwrap()
        .contains("https://redis.azure.com/.default"));
    // Redis refuses it too, and its advice blames the scope rather than the access policy.
    let auth = step(&report, "auth");
    assert_eq!(auth["verdict"], "fail");
    assert!(auth["advice"].as_str().unwrap().contains("scope"), "{all}");
}

#[test]
fn an_unreachable_identity_endpoint_says_this_is_not_an_azure_host() {
    let env = default_env("check-imds");
    let vars = vec![
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
            format!("http://127.0.0.1:{}", common::closed_port()),
        ),
        env.ca(),
    ];
    let (code, report, all) = check_json(&env.tls_url(), &["--source", "imds"], &vars);
    assert_eq!(code, 1, "{all}");
    let token = step(&report, "token");
    assert_eq!(token["verdict"], "fail");
    assert!(
        token["advice"].as_str().unwrap().contains("not an Azure"),
        "{all}"
    );
    // The network steps still ran: the cache itself is reachable.
    assert_eq!(step(&report, "tls")["verdict"], "ok");
    assert_eq!(step(&report, "auth")["verdict"], "skip");
}

#[test]
fn a_tls_name_mismatch_is_reported_at_the_tls_step() {
    let env = default_env("check-tls");
    let mut vars = env.flows()[3].vars.clone();
    vars.push(env.ca());
    let port = env.emu.redis_tls_addr().unwrap().port();
    let url = format!("rediss://cache.wrong-name.example:{port}");
    let (code, report, all) = check_json(
        &url,
        &[
            "--source",
            "imds",
            "--resolve",
            "cache.wrong-name.example:127.0.0.1",
        ],
        &vars,
    );
    assert_eq!(code, 1, "{all}");
    let tls = step(&report, "tls");
    assert_eq!(tls["verdict"], "fail");
    assert!(
        tls["summary"]
            .as_str()
            .unwrap()
            .contains("not valid for cache.wrong-name.example"),
        "{all}"
    );
    assert!(
        tls["advice"].as_str().unwrap().contains("host name"),
        "{all}"
    );
}

#[test]
fn an_untrusted_server_certificate_is_reported_at_the_tls_step() {
    let env = default_env("check-ca");
    let vars = env.flows()[3].vars.clone(); // no SSL_CERT_FILE: the emulator's CA is unknown
    let (code, report, all) = check_json(&env.tls_url(), &["--source", "imds"], &vars);
    assert_eq!(code, 1, "{all}");
    let tls = step(&report, "tls");
    assert_eq!(tls["verdict"], "fail");
    assert!(
        tls["advice"].as_str().unwrap().contains("SSL_CERT_FILE"),
        "{all}"
    );
}

#[test]
fn a_closed_redis_port_fails_at_tcp_with_port_advice() {
    let env = default_env("check-port");
    let vars = env.flows()[3].vars.clone();
    let url = format!("rediss://localhost:{}", common::closed_port());
    let (code, report, all) = check_json(&url, &["--source", "imds"], &vars);
    assert_eq!(code, 1, "{all}");
    let tcp = step(&report, "tcp");
    assert_eq!(tcp["verdict"], "fail");
    assert!(tcp["advice"].as_str().unwrap().contains("port"), "{all}");
    // The identity half still passed.
    assert_eq!(step(&report, "token")["verdict"], "ok");
}

#[test]
fn a_plain_url_passes_with_a_tls_warning() {
    let env = start(
        Emulator::builder().token_lifetime(Duration::from_secs(3600)),
        "check-plain",
    );
    let vars = env.flows()[3].vars.clone();
    let (code, report, all) = check_json(&env.plain_url(), &["--source", "imds"], &vars);
    assert_eq!(code, 0, "{all}");
    assert_eq!(step(&report, "tls")["verdict"], "warn");
    assert!(step(&report, "tls")["advice"]
        .as_str()
        .unwrap()
        .contains("rediss://"));
}

#[test]
fn bad_urls_are_usage_errors_without_panics() {
    for url in [
        "not a url",
        "http://example.com",
        "rediss://",
        "rediss://host:99999",
    ] {
        let out = run(&["check", url], &[]);
        assert_eq!(out.code, 2, "{url}: {}", out.all());
        assert_clean_error(&out);
    }
}
