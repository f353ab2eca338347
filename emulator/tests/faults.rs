//! Each injected fault does what it says; the control API injects faults and reports counters.
#![allow(clippy::unwrap_used, clippy::result_large_err, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{claims, http_agent, json_of, start, Raw};
use redis_entraid_emulator::{Emulator, Endpoint, Fault, FaultKind};
use serde_json::{json, Value};

fn emulator() -> redis_entraid_emulator::BlockingEmulator {
    start(Emulator::builder().without_redis())
}

fn imds_call(emu: &Emulator) -> Result<ureq::Response, ureq::Error> {
    http_agent()
        .get(&emu.imds_token_url())
        .query("api-version", "2018-02-01")
        .query("resource", "https://redis.azure.com")
        .set("Metadata", "true")
        .call()
}

fn imds(emu: &Emulator) -> (u16, Value) {
    json_of(imds_call(emu))
}

fn app_service(emu: &Emulator) -> (u16, Value) {
    json_of(
        http_agent()
            .get(&emu.app_service_endpoint())
            .query("api-version", "2019-08-01")
            .query("resource", "https://redis.azure.com")
            .set("X-IDENTITY-HEADER", emu.identity_header())
            .call(),
    )
}

fn entra(emu: &Emulator) -> (u16, Value) {
    let sp = &emu.identities().service_principal;
    json_of(
        http_agent()
            .post(&format!(
                "{}/{}/oauth2/v2.0/token",
                emu.http_base(),
                emu.tenant_id()
            ))
            .send_form(&[
                ("client_id", sp.client_id.as_str()),
                ("client_secret", sp.client_secret.expose()),
                ("grant_type", "client_credentials"),
                ("scope", "https://redis.azure.com/.default"),
            ]),
    )
}

#[test]
fn status_faults_fail_the_next_n_requests_with_the_endpoint_error_shape() {
    let emu = emulator();
    for status in [500u16, 503, 404, 410] {
        emu.faults().fail_next(2, status);
        let (s1, b1) = imds(&emu);
        let (s2, b2) = app_service(&emu);
        assert_eq!((s1, s2), (status, status));
        assert!(
            b1["error"].is_string() && b1["error_description"].is_string(),
            "{b1}"
        );
        assert_eq!(b2["statusCode"], status, "{b2}");
        assert_eq!(imds(&emu).0, 200, "only {status} x2");
    }
    emu.faults()
        .inject(Fault::status(503).only(Endpoint::Entra));
    let (status, body) = entra(&emu);
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(
        body["error_codes"].is_array()
            && body["correlation_id"].is_string()
            && body["trace_id"].is_string()
    );
    let c = emu.counters();
    assert_eq!(c.faults_served, 9);
    assert_eq!(c.tokens_issued, 4);
}

#[test]
fn too_many_requests_fault_sets_retry_after() {
    let emu = emulator();
    emu.faults().inject(Fault::too_many_requests(7).times(1));
    match imds_call(&emu) {
        Err(ureq::Error::Status(429, r)) => assert_eq!(r.header("Retry-After"), Some("7")),
        other => panic!("expected 429, got {other:?}"),
    }
    emu.faults()
        .inject(Fault::too_many_requests(3).only(Endpoint::Entra));
    let (status, body) = entra(&emu);
    assert_eq!(status, 429, "{body}");
    assert_eq!(imds(&emu).0, 200);
}

#[test]
fn invalid_client_fault_answers_400_invalid_client() {
    let emu = emulator();
    emu.faults().inject(Fault::new(FaultKind::InvalidClient));
    let (status, body) = entra(&emu);
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([7000215]));
}

#[test]
fn faults_can_target_one_endpoint() {
    let emu = emulator();
    emu.faults()
        .inject(Fault::status(500).times(3).only(Endpoint::AppService));
    assert_eq!(imds(&emu).0, 200);
    assert_eq!(entra(&emu).0, 200);
    assert_eq!(app_service(&emu).0, 500);
    assert_eq!(emu.faults().pending()[0].count, 2);
    emu.faults().clear();
    assert_eq!(app_service(&emu).0, 200);
}

#[test]
fn delay_fault_delays_the_answer() {
    let emu = emulator();
    emu.faults()
        .inject(Fault::delay(Duration::from_millis(700)));
    let started = Instant::now();
    assert_eq!(imds(&emu).0, 200);
    let took = started.elapsed();
    eprintln!("delayed answer took {took:?}");
    assert!(took >= Duration::from_millis(700));
    assert!(
        emu.faults().pending().is_empty(),
        "a delay fault is used up"
    );
    assert_eq!(emu.counters().faults_served, 1);
}

#[test]
fn malformed_body_fault_answers_200_with_non_json() {
    let emu = emulator();
    emu.faults().inject(Fault::new(FaultKind::MalformedBody));
    let resp = imds_call(&emu).unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_string().unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
}

#[test]
fn close_connection_fault_closes_without_answering() {
    let emu = emulator();
    emu.faults().inject(Fault::new(FaultKind::CloseConnection));
    match imds_call(&emu) {
        Err(ureq::Error::Transport(t)) => eprintln!("transport error as expected: {t}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert_eq!(imds(&emu).0, 200);
    assert_eq!(emu.counters().faults_served, 1);
}

#[test]
fn token_without_oid_and_expired_token_faults_shape_the_token() {
    let emu = start(Emulator::builder().token_lifetime(Duration::from_secs(60)));
    emu.faults().inject(Fault::new(FaultKind::TokenWithoutOid));
    let (status, body) = imds(&emu);
    assert_eq!(status, 200);
    let no_oid = body["access_token"].as_str().unwrap().to_string();
    assert!(claims(&no_oid).get("oid").is_none());

    emu.faults()
        .inject(Fault::new(FaultKind::ExpiredToken).only(Endpoint::Entra));
    let (status, body) = entra(&emu);
    assert_eq!(status, 200);
    let expired = body["access_token"].as_str().unwrap().to_string();
    let exp = claims(&expired)["exp"].as_f64().unwrap();
    assert!(exp < common::now_f64());
    assert_eq!(body["expires_in"], 0);

    // The proxy refuses both.
    let mut raw = Raw::connect(emu.redis_addr().unwrap());
    let sp_oid = emu.identities().service_principal.object_id.clone();
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(raw.call(&["AUTH", emu.default_oid(), &no_oid]), wrongpass);
    assert_eq!(raw.call(&["AUTH", &sp_oid, &expired]), wrongpass);
    assert_eq!(emu.counters().redis_auth_failed, 2);
}

#[test]
fn control_api_injects_faults_and_reports_counters() {
    let emu = emulator();
    let base = emu.http_base();
    let (status, pending) = json_of(
        http_agent()
            .post(&format!("{base}/_emulator/faults"))
            .send_json(json!({"kind": "status", "status": 503, "count": 2, "endpoint": "imds"})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        pending,
        json!([{"kind": "status", "status": 503, "count": 2, "endpoint": "imds"}])
    );
    assert_eq!(imds(&emu).0, 503);
    let (status, _) = json_of(
        http_agent()
            .post(&format!("{base}/_emulator/faults"))
            .send_json(json!([{"kind": "too_many_requests", "retry_after_secs": 2}])),
    );
    assert_eq!(status, 200);
    assert_eq!(
        json_of(http_agent().get(&format!("{base}/_emulator/faults")).call())
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        json_of(
            http_agent()
                .delete(&format!("{base}/_emulator/faults"))
                .call()
        )
        .0,
        200
    );
    assert_eq!(imds(&emu).0, 200);
    let (status, _) = json_of(
        http_agent()
            .post(&format!("{base}/_emulator/faults"))
            .send_string("{\"kind\":\"nope\"}"),
    );
    assert_eq!(status, 400);

    let (status, counters) = json_of(
        http_agent()
            .get(&format!("{base}/_emulator/counters"))
            .call(),
    );
    assert_eq!(status, 200);
    assert_eq!(counters["imds_requests"], 2);
    assert_eq!(counters["faults_served"], 1);
    assert_eq!(counters["tokens_issued"], 1);
    assert_eq!(
        serde_json::from_value::<redis_entraid_emulator::Counters>(counters).unwrap(),
        emu.counters()
    );

    let (status, minted) = json_of(
        http_agent()
            .post(&format!("{base}/_emulator/token"))
            .send_json(json!({"oid": "abc", "lifetime_secs": 5})),
    );
    assert_eq!(status, 200);
    let c = claims(minted["access_token"].as_str().unwrap());
    assert_eq!(c["oid"], "abc");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 5);
    let pem = http_agent()
        .get(&format!("{base}/_emulator/signing-key"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(pem, emu.signing_key_pem());
}
