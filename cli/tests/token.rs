//! `redis-entraid token` against the emulator: every flow, the secrecy of the token, and clean
//! usage errors

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use common::{assert_clean_error, assert_no_token, default_env, run};

#[test]
fn token_names_the_answering_source_and_the_oid_for_every_flow_without_printing_the_token() {
    let env = default_env("token-flows");
    for flow in env.flows() {
        let out = run(&["token", "--source", flow.source, "--json"], &flow.vars);
        assert_eq!(
            out.code,
            0,
            "{} ({}): {}",
            flow.source,
            flow.answered_by,
            out.all()
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["source"], flow.answered_by, "{}", flow.source);
        assert_eq!(v["oid"], flow.oid.as_str(), "{}", flow.source);
        assert_eq!(v["tid"], env.emu.tenant_id(), "{}", flow.source);
        assert_eq!(v["aud"][0], "https://redis.azure.com", "{}", flow.source);
        assert_eq!(v["audience_ok"], true);
        assert!(
            v["lifetime_left_s"].as_i64().unwrap() > 3500,
            "{}",
            flow.source
        );
        assert!(v["request_ms"].is_u64());
        assert!(v.get("access_token").is_none());
        assert_no_token(&out.all());

        let human = run(&["token", "--source", flow.source], &flow.vars);
        assert_eq!(human.code, 0, "{}", human.all());
        assert!(human.stdout.contains(&flow.oid), "{}", human.stdout);
        assert!(human.stdout.contains("(the Redis username)"));
        assert_no_token(&human.all());
    }
}

#[test]
fn the_token_is_printed_only_with_show_token_and_stderr_says_so() {
    let env = default_env("token-show");
    let flow = &env.flows()[3];
    let out = run(
        &["token", "--source", flow.source, "--show-token", "--json"],
        &flow.vars,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let token = v["access_token"].as_str().unwrap();
    assert!(token.starts_with("eyJ") && token.matches('.').count() == 2);
    assert!(
        out.stderr.contains("the access token is printed below"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(token));
}

#[test]
fn a_wrong_scope_yields_a_token_flagged_as_not_for_redis_and_exit_1() {
    let env = default_env("token-scope");
    let flow = &env.flows()[3];
    let out = run(
        &[
            "token",
            "--source",
            "imds",
            "--scope",
            "https://management.azure.com/.default",
        ],
        &flow.vars,
    );
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("https://management.azure.com"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("not Redis: wrong scope"),
        "{}",
        out.stdout
    );
    assert_no_token(&out.all());
}

#[test]
fn an_unknown_source_is_a_usage_error_with_exit_2() {
    let out = run(&["token", "--source", "kerberos"], &[]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("kerberos"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
}

#[test]
fn a_missing_variable_is_a_one_line_usage_error_naming_it() {
    let out = run(&["token", "--source", "secret"], &[]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert_clean_error(&out);
    assert!(out.stderr.contains("AZURE_CLIENT_SECRET"), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
}

#[test]
fn no_identity_at_all_fails_with_advice_on_what_to_set() {
    // IMDS at a closed port: the default chain finds nothing anywhere.
    let vars = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
        format!("http://127.0.0.1:{}", common::closed_port()),
    )];
    let out = run(&["token", "--timeout", "5s"], &vars);
    assert_eq!(out.code, 1, "{}", out.all());
    assert_clean_error(&out);
    assert!(out.stderr.contains("AZURE_CLIENT_SECRET"), "{}", out.stderr);
}
