//! The identity endpoints answer well-formed requests as Azure does and reject malformed ones.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::Duration;

use common::{claims, header, http_agent, https_agent, json_of, start};
use redis_entraid_emulator::{Alg, ClientCertificate, Emulator, ManagedIdentity, REDIS_AUDIENCE};
use serde_json::{json, Value};

const RESOURCE: &str = "https://redis.azure.com";
const SCOPE: &str = "https://redis.azure.com/.default";

fn emulator() -> redis_entraid_emulator::BlockingEmulator {
    start(
        Emulator::builder()
            .token_lifetime(Duration::from_secs(300))
            .without_redis(),
    )
}

fn imds(emu: &Emulator, selector: Option<(&str, &str)>, metadata: bool) -> (u16, Value) {
    let mut req = http_agent()
        .get(&emu.imds_token_url())
        .query("api-version", "2018-02-01")
        .query("resource", RESOURCE);
    if let Some((k, v)) = selector {
        req = req.query(k, v);
    }
    if metadata {
        req = req.set("Metadata", "true");
    }
    json_of(req.call())
}

fn assert_string_number(v: &Value, field: &str) -> u64 {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} must be a string: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn imds_answers_with_string_typed_numbers_for_the_system_assigned_identity() {
    let emu = emulator();
    let (status, body) = imds(&emu, None, true);
    assert_eq!(status, 200, "{body}");
    let sys = emu.identities().system_assigned.clone().unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], RESOURCE);
    assert_eq!(body["client_id"], sys.client_id.as_str());
    let expires_in = assert_string_number(&body, "expires_in");
    let expires_on = assert_string_number(&body, "expires_on");
    assert_string_number(&body, "ext_expires_in");
    let not_before = assert_string_number(&body, "not_before");
    assert!((299..=300).contains(&expires_in));
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["oid"], sys.object_id.as_str());
    assert_eq!(c["appid"], sys.client_id.as_str());
    assert_eq!(c["tid"], emu.tenant_id());
    assert_eq!(c["aud"], RESOURCE);
    assert_eq!(
        c["iss"],
        format!("https://sts.windows.net/{}/", emu.tenant_id())
    );
    assert_eq!(c["exp"].as_u64(), Some(expires_on));
    assert_eq!(c["nbf"].as_u64(), Some(not_before));
    assert!(c["iat"].is_u64());
    assert_eq!(c["xms_mirid"], sys.resource_id.as_str());
    assert_eq!(header(token)["alg"], "RS256");
    assert_eq!(emu.counters().imds_requests, 1);
    assert_eq!(emu.counters().tokens_issued, 1);
}

#[test]
fn imds_selects_user_assigned_identities_by_client_id_object_id_and_msi_res_id() {
    let extra = ManagedIdentity::user_assigned("second");
    let emu = start(
        Emulator::builder()
            .without_redis()
            .user_assigned(extra.clone()),
    );
    for mi in [&emu.identities().user_assigned[0], &extra] {
        for (k, v) in [
            ("client_id", &mi.client_id),
            ("object_id", &mi.object_id),
            ("msi_res_id", &mi.resource_id),
        ] {
            let (status, body) = imds(&emu, Some((k, v)), true);
            assert_eq!(status, 200, "{k}: {body}");
            assert_eq!(
                claims(body["access_token"].as_str().unwrap())["oid"],
                mi.object_id.as_str(),
                "{k}"
            );
            assert_eq!(body[k], v.as_str(), "{k} is echoed");
        }
    }
}

#[test]
fn each_identity_has_its_own_oid() {
    let emu = emulator();
    let ids = emu.identities();
    let mut oids = HashSet::new();
    let (_, b) = imds(&emu, None, true);
    oids.insert(
        claims(b["access_token"].as_str().unwrap())["oid"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let (_, b) = imds(
        &emu,
        Some(("client_id", &ids.user_assigned[0].client_id)),
        true,
    );
    oids.insert(
        claims(b["access_token"].as_str().unwrap())["oid"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let (_, b) = entra_secret(
        &emu,
        &ids.service_principal.client_id,
        ids.service_principal.client_secret.expose(),
    );
    oids.insert(
        claims(b["access_token"].as_str().unwrap())["oid"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    assert_eq!(oids.len(), 3);
}

#[test]
fn imds_rejects_malformed_requests_with_400() {
    let emu = emulator();
    let (status, body) = imds(&emu, None, false);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request_102"))
    );
    assert_eq!(
        body["error_description"],
        "Required metadata header not specified"
    );
    let (status, body) = imds(
        &emu,
        Some(("client_id", "00000000-0000-0000-0000-000000000000")),
        true,
    );
    assert_eq!(status, 400, "unknown identity: {body}");
    assert_eq!(body["error"], "invalid_request");
    let (status, _) = json_of(
        http_agent()
            .get(&emu.imds_token_url())
            .query("api-version", "2018-02-01")
            .set("Metadata", "true")
            .call(),
    );
    assert_eq!(status, 400, "missing resource");
    let ids = emu.identities();
    let (status, _) = json_of(
        http_agent()
            .get(&emu.imds_token_url())
            .query("api-version", "2018-02-01")
            .query("resource", RESOURCE)
            .query("client_id", &ids.user_assigned[0].client_id)
            .query("object_id", &ids.user_assigned[0].object_id)
            .set("Metadata", "true")
            .call(),
    );
    assert_eq!(status, 400, "two selectors");
    let no_system = start(Emulator::builder().without_redis().system_assigned(None));
    assert_eq!(
        imds(&no_system, None, true).0,
        400,
        "no system-assigned identity"
    );
}

fn app_service(
    emu: &Emulator,
    header: Option<&str>,
    selector: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = http_agent()
        .get(&emu.app_service_endpoint())
        .query("api-version", "2019-08-01")
        .query("resource", RESOURCE);
    if let Some((k, v)) = selector {
        req = req.query(k, v);
    }
    if let Some(h) = header {
        req = req.set("X-IDENTITY-HEADER", h);
    }
    json_of(req.call())
}

#[test]
fn app_service_answers_with_expires_on_only_and_checks_the_identity_header() {
    let emu = emulator();
    let (status, body) = app_service(&emu, Some(emu.identity_header()), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.get("expires_in").is_none());
    assert_string_number(&body, "expires_on");
    assert_string_number(&body, "not_before");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], RESOURCE);
    let uami = emu.identities().user_assigned[0].clone();
    for (k, v) in [
        ("client_id", &uami.client_id),
        ("object_id", &uami.object_id),
        ("principal_id", &uami.object_id),
        ("mi_res_id", &uami.resource_id),
    ] {
        let (status, body) = app_service(&emu, Some(emu.identity_header()), Some((k, v)));
        assert_eq!(status, 200, "{k}");
        assert_eq!(
            claims(body["access_token"].as_str().unwrap())["oid"],
            uami.object_id.as_str()
        );
    }
    assert_eq!(app_service(&emu, None, None).0, 400, "missing header");
    assert_eq!(
        app_service(&emu, Some("wrong"), None).0,
        400,
        "wrong header"
    );
    let (status, body) = app_service(
        &emu,
        Some(emu.identity_header()),
        Some(("msi_res_id", &uami.resource_id)),
    );
    assert_eq!(status, 400, "IMDS spelling refused: {body}");
    assert!(body["message"].as_str().unwrap().contains("mi_res_id"));
    assert_eq!(emu.counters().app_service_requests, 8);
}

fn entra_form(emu: &Emulator, base: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("{base}/{}/oauth2/v2.0/token", emu.tenant_id());
    let agent = if base.starts_with("https") {
        https_agent(emu.ca_cert_pem())
    } else {
        http_agent()
    };
    json_of(agent.post(&url).send_form(fields))
}

fn entra_secret(emu: &Emulator, client_id: &str, secret: &str) -> (u16, Value) {
    entra_form(
        emu,
        &emu.authority_host(),
        &[
            ("client_id", client_id),
            ("client_secret", secret),
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ],
    )
}

fn assert_entra_error(body: &Value, error: &str, code: u64) {
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with(&format!("AADSTS{code}:")));
    for f in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[f].is_string(), "{f} in {body}");
    }
}

#[test]
fn entra_client_secret_flow_answers_numbers_over_https() {
    let emu = emulator();
    let sp = emu.identities().service_principal.clone();
    let (status, body) = entra_secret(&emu, &sp.client_id, sp.client_secret.expose());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        body["expires_in"].is_u64() && body["ext_expires_in"].is_u64(),
        "{body}"
    );
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["oid"], sp.object_id.as_str());
    assert_eq!(c["appid"], sp.client_id.as_str());
    assert_eq!(c["aud"], REDIS_AUDIENCE);
    assert_eq!(emu.counters().entra_requests, 1);
}

#[test]
fn entra_rejects_bad_secrets_clients_scopes_and_tenants_with_entra_error_bodies() {
    let emu = emulator();
    let sp = emu.identities().service_principal.clone();
    let (status, body) = entra_secret(&emu, &sp.client_id, "wrong");
    assert_eq!(status, 401);
    assert_entra_error(&body, "invalid_client", 7000215);
    let (status, body) = entra_secret(&emu, "00000000-0000-0000-0000-000000000000", "x");
    assert_eq!(status, 400);
    assert_entra_error(&body, "unauthorized_client", 700016);
    let base = emu.authority_host();
    let secret = sp.client_secret.expose();
    let (status, body) = entra_form(
        &emu,
        &base,
        &[
            ("client_id", &sp.client_id),
            ("client_secret", secret),
            ("grant_type", "client_credentials"),
            ("scope", RESOURCE),
        ],
    );
    assert_eq!(status, 400);
    assert_entra_error(&body, "invalid_scope", 1002012);
    let (status, body) = entra_form(
        &emu,
        &base,
        &[
            ("client_id", &sp.client_id),
            ("client_secret", secret),
            ("grant_type", "password"),
            ("scope", SCOPE),
        ],
    );
    assert_eq!(status, 400);
    assert_entra_error(&body, "unsupported_grant_type", 70003);
    let (status, body) = entra_form(
        &emu,
        &base,
        &[
            ("client_id", &sp.client_id),
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ],
    );
    assert_eq!(status, 401);
    assert_entra_error(&body, "invalid_client", 7000218);
    let url = format!("{base}/common/oauth2/v2.0/token");
    let (status, body) = json_of(https_agent(emu.ca_cert_pem()).post(&url).send_form(&[
        ("client_id", &sp.client_id),
        ("client_secret", secret),
        ("grant_type", "client_credentials"),
        ("scope", SCOPE),
    ]));
    assert_eq!(status, 400);
    assert_entra_error(&body, "invalid_request", 50059);
    let url = format!("{base}/{}/oauth2/v2.0/token", emu.tenant_id());
    let (status, body) = json_of(
        https_agent(emu.ca_cert_pem())
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string("{}"),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
}

#[test]
fn entra_accepts_verified_certificate_assertions_and_rejects_bad_ones() {
    let cert = ClientCertificate::generate("app").unwrap();
    let other = ClientCertificate::generate("unregistered").unwrap();
    let emu = start(
        Emulator::builder()
            .without_redis()
            .client_certificate(cert.certificate_pem()),
    );
    let sp = emu.identities().service_principal.clone();
    let post = |base: &str, assertion: &str| {
        entra_form(
            &emu,
            base,
            &[
                ("client_id", &sp.client_id),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
                ("grant_type", "client_credentials"),
                ("scope", SCOPE),
            ],
        )
    };
    let https = emu.authority_host();
    let http = emu.http_base();
    for alg in [Alg::Ps256, Alg::Rs256] {
        let (status, body) = post(
            &https,
            &cert.assertion(alg, &sp.client_id, &emu.token_url()),
        );
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(
            claims(body["access_token"].as_str().unwrap())["oid"],
            sp.object_id.as_str()
        );
    }
    let http_url = format!("{http}/{}/oauth2/v2.0/token", emu.tenant_id());
    assert_eq!(
        post(&http, &cert.assertion(Alg::Ps256, &sp.client_id, &http_url)).0,
        200,
        "aud = the http URL over http"
    );

    let (status, body) = post(
        &https,
        &cert.assertion(Alg::Ps256, &sp.client_id, &http_url),
    );
    assert_eq!(status, 401, "aud is another URL");
    assert_entra_error(&body, "invalid_client", 700023);
    let (status, body) = post(
        &https,
        &other.assertion(Alg::Ps256, &sp.client_id, &emu.token_url()),
    );
    assert_eq!(status, 401, "unregistered certificate");
    assert_entra_error(&body, "invalid_client", 700027);
    let now = common::now_f64() as u64;
    let expired = cert.assertion_with_claims(Alg::Ps256, json!({"aud": emu.token_url(), "iss": sp.client_id, "sub": sp.client_id, "nbf": now - 900, "exp": now - 300}));
    let (status, body) = post(&https, &expired);
    assert_eq!(status, 401);
    assert_entra_error(&body, "invalid_client", 700024);
    let wrong_iss = cert.assertion_with_claims(
        Alg::Rs256,
        json!({"aud": emu.token_url(), "iss": "someone", "sub": sp.client_id, "exp": now + 300}),
    );
    let (status, body) = post(&https, &wrong_iss);
    assert_eq!(status, 401);
    assert_entra_error(&body, "invalid_client", 700021);
    // Right thumbprint, signature by another key.
    let forged = cert.assertion(Alg::Ps256, &sp.client_id, &emu.token_url());
    let forged_by_other = other.assertion(Alg::Ps256, &sp.client_id, &emu.token_url());
    let spliced = format!(
        "{}.{}",
        forged.rsplit_once('.').unwrap().0,
        forged_by_other.rsplit_once('.').unwrap().1
    );
    let (status, body) = post(&https, &spliced);
    assert_eq!(status, 401);
    assert_entra_error(&body, "invalid_client", 700027);
    assert_eq!(post(&https, "garbage").0, 400);
}

#[test]
fn entra_exchanges_the_federated_token_file_for_workload_identity() {
    let emu = emulator();
    let sp = emu.identities().service_principal.clone();
    let federated = std::fs::read_to_string(emu.federated_token_file()).unwrap();
    let post = |assertion: &str| {
        entra_form(
            &emu,
            &emu.authority_host(),
            &[
                ("client_assertion", assertion),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_id", &sp.client_id),
                ("grant_type", "client_credentials"),
                ("scope", SCOPE),
            ],
        )
    };
    let (status, body) = post(&federated);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["oid"],
        sp.object_id.as_str()
    );
    assert_eq!(
        claims(&federated)["aud"],
        json!(["api://AzureADTokenExchange"])
    );

    let rotated = emu.rotate_federated_token().unwrap();
    assert_eq!(
        std::fs::read_to_string(emu.federated_token_file()).unwrap(),
        rotated
    );
    assert_eq!(post(&rotated).0, 200);

    let forger = ClientCertificate::generate("forger").unwrap();
    let forged = forger.assertion_with_claims(Alg::Rs256, claims(&federated));
    let (status, body) = post(&forged);
    assert_eq!(status, 400);
    assert_entra_error(&body, "invalid_client", 700027);

    let short = start(
        Emulator::builder()
            .without_redis()
            .federated_token_lifetime(Duration::from_secs(1)),
    );
    let token = std::fs::read_to_string(short.federated_token_file()).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let ssp = short.identities().service_principal.clone();
    let (status, body) = entra_form(
        &short,
        &short.authority_host(),
        &[
            ("client_assertion", &token),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_id", &ssp.client_id),
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ],
    );
    assert_eq!(status, 400, "expired federated token");
    assert_entra_error(&body, "invalid_client", 700024);
}

#[test]
fn malformed_http_gets_400_and_unknown_paths_404() {
    let emu = emulator();
    let mut s =
        std::net::TcpStream::connect(emu.http_base().trim_start_matches("http://")).unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let (status, _) = json_of(
        http_agent()
            .get(&format!("{}/nope", emu.http_base()))
            .call(),
    );
    assert_eq!(status, 404);
    let (status, _) = json_of(
        http_agent()
            .post(&emu.imds_token_url())
            .set("Metadata", "true")
            .call(),
    );
    assert_eq!(status, 405);
}

#[test]
fn env_lists_everything_a_client_needs_and_debug_hides_secrets() {
    let emu = start(Emulator::builder());
    let env: std::collections::HashMap<String, String> = emu.env().into_iter().collect();
    for k in [
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "AZURE_AUTHORITY_HOST",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "SSL_CERT_FILE",
        "REDIS_ENDPOINT",
    ] {
        assert!(env.get(k).is_some_and(|v| !v.is_empty()), "{k}");
    }
    assert!(std::path::Path::new(&env["SSL_CERT_FILE"]).is_file());
    assert!(std::path::Path::new(&env["AZURE_FEDERATED_TOKEN_FILE"]).is_file());
    let secret = emu
        .identities()
        .service_principal
        .client_secret
        .expose()
        .to_string();
    assert_eq!(env["AZURE_CLIENT_SECRET"], secret);
    let debug = format!("{:?} {:?}", *emu, emu.identities());
    assert!(!debug.contains(&secret), "secret in Debug: {debug}");
}
