//! No log line, event, error or printed value carries a secret, on any runtime, for any flow
//! the emulator serves
//!
//! Everything every crate logs is captured at TRACE, through `tracing` and the `log` bridge
//! (ureq, rustls, redis log through `log`), together with `Debug` and
//! `Display` of every public value, error and event the test can reach, including the request
//! a custom HTTP client receives. Each secret is looked for raw, form-encoded, as a `Debug`
//! byte list, in base64 and base64url; any JWT (tokens, client and federated assertions) is
//! found by its shape. `secrets_capture.rs` proves this capture sees a leak.
//!
//! One test walks every runtime × flow: the logger is process-wide, so one test per binary
//! keeps the capture reliable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

#[path = "common/capture.rs"]
mod capture;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use redis_entraid_core::identity::client_certificate::ClientCertificateFile;
use redis_entraid_core::identity::env as vars;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::{FetchContext, Step, TokenSource};
use redis_entraid_core::token::Credentials;
use redis_entraid_emulator::{ClientCertificate, Emulator, Endpoint, Fault, FaultKind};
use redis_entraid_tests::{e2e_config, flows, Flow};

/// How long to wait for a token (first or rotated)
const WAIT: Duration = Duration::from_secs(10);

/// What one runtime × flow case produced
#[derive(Default)]
struct Seen {
    tokens: Vec<String>,
    printed: String,
}

impl Seen {
    fn token(&mut self, credentials: Option<Credentials>) {
        if let Some(c) = credentials {
            let token = c.password().expose_secret().to_owned();
            if !self.tokens.contains(&token) {
                self.tokens.push(token);
            }
        }
    }

    fn print(&mut self, what: &str, value: &dyn std::fmt::Debug) {
        let _ = writeln!(self.printed, "{what}: {value:?}");
    }

    fn display(&mut self, what: &str, value: &dyn std::fmt::Display) {
        let _ = writeln!(self.printed, "{what}: {value}");
    }
}

/// Injects an Entra refusal for the next request of an Entra flow, so error paths are logged
fn entra_flow(flow: &Flow) -> bool {
    matches!(
        flow.source,
        TokenSource::ClientSecret(_)
            | TokenSource::ClientCertificateFile(_)
            | TokenSource::WorkloadIdentity(_)
    )
}

fn print_source(seen: &mut Seen, flow: &Flow) {
    seen.print("source", &flow.source);
    seen.display("source name", &flow.source.name());
    // What a runtime executing the core, or a custom HTTP client, receives
    let mut fetch = flow
        .source
        .fetch(FetchContext::new(SystemTime::now(), [7; 32]));
    seen.print("fetch", &fetch);
    if let Ok(step) = fetch.start() {
        seen.print("step", &step);
        if let Step::Http { request, meta } = &step {
            seen.print("request", request);
            seen.print("request meta", meta);
        }
    }
    seen.print("fetch under way", &fetch);
    if let TokenSource::ClientSecret(secret) = &flow.source {
        seen.print("client secret", secret);
        seen.print("client secret request", &secret.build_request());
    }
}

fn blocking(flow: &Flow, emu: &redis_entraid_emulator::BlockingEmulator, ca: &PathBuf) -> Seen {
    use redis_entraid_blocking::redis_sync::EntraClient;
    use redis_entraid_blocking::{HttpConfig, Provider, Startup};

    let mut seen = Seen::default();
    print_source(&mut seen, flow);
    let provider = Provider::builder()
        .config(e2e_config())
        .http(HttpConfig::default().add_root_ca(ca).ignore_ssl_cert_file())
        .startup(Startup::Wait(WAIT))
        .build(flow.source.clone())
        .unwrap_or_else(|e| panic!("blocking, {}: {e}", flow.name));
    let events = provider.events();
    seen.token(provider.credentials());
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
        provider.clone(),
    );
    let mut conn = client.get_connection().unwrap();
    redis::cmd("PING").query::<()>(&mut conn).unwrap();
    if entra_flow(flow) {
        emu.faults()
            .inject(Fault::new(FaultKind::InvalidClient).only(Endpoint::Entra));
    }
    let deadline = Instant::now() + WAIT;
    while seen.tokens.len() < 2 && Instant::now() < deadline {
        provider.refresh_now();
        std::thread::sleep(Duration::from_millis(300));
        seen.token(provider.credentials());
        if let Some(e) = provider.last_error() {
            seen.display("error", &e);
            seen.print("error", &e);
        }
    }
    redis::cmd("PING").query::<()>(&mut conn).unwrap();
    for event in events.try_iter() {
        seen.print("event", &event);
    }
    seen.print("provider", &provider);
    seen.print("client", &client);
    seen.print("connection", &conn);
    seen.print("credentials", &provider.credentials());
    seen.print("status", &provider.status());
    seen.print("last error", &provider.last_error());
    provider.shutdown();
    seen
}

fn async_std(flow: &Flow, emu: &redis_entraid_emulator::BlockingEmulator, ca: &PathBuf) -> Seen {
    use redis_entraid_async_std::redis::EntraClient;
    use redis_entraid_async_std::{HttpConfig, Provider, Startup};

    smol::block_on(async {
        let mut seen = Seen::default();
        print_source(&mut seen, flow);
        let provider = Provider::builder()
            .config(e2e_config())
            .http(HttpConfig::default().add_root_ca(ca).ignore_ssl_cert_file())
            .startup(Startup::Wait(WAIT))
            .build(flow.source.clone(), |driver| smol::spawn(driver).detach())
            .await
            .unwrap_or_else(|e| panic!("async-std, {}: {e}", flow.name));
        let mut events = provider.events();
        seen.token(provider.credentials());
        let client = EntraClient::new(
            redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
            provider.clone(),
        );
        let mut conn = client.get_multiplexed_connection().await.unwrap();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        if entra_flow(flow) {
            emu.faults()
                .inject(Fault::new(FaultKind::InvalidClient).only(Endpoint::Entra));
        }
        let deadline = Instant::now() + WAIT;
        while seen.tokens.len() < 2 && Instant::now() < deadline {
            provider.refresh_now();
            smol::Timer::after(Duration::from_millis(300)).await;
            seen.token(provider.credentials());
            if let Some(e) = provider.last_error() {
                seen.display("error", &e);
                seen.print("error", &e);
            }
        }
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        while let Ok(event) = events.try_recv() {
            seen.print("event", &event);
        }
        seen.print("provider", &provider);
        seen.print("client", &client);
        seen.print("credentials", &provider.credentials());
        seen.print("status", &provider.status());
        seen.print("last error", &provider.last_error());
        provider.shutdown().await;
        seen
    })
}

fn tokio(flow: &Flow, emu: &redis_entraid_emulator::BlockingEmulator) -> Seen {
    use redis_entraid_tokio::http::HttpClient;
    use redis_entraid_tokio::redis_async::EntraClient;
    use redis_entraid_tokio::{Identity, Provider, Startup};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut seen = Seen::default();
        print_source(&mut seen, flow);
        let http = HttpClient::builder()
            .ignore_ssl_cert_file()
            .add_root_certificates_pem(emu.ca_cert_pem().as_bytes())
            .unwrap()
            .build()
            .unwrap();
        seen.print("http client", &http);
        let identity = Identity::with_client(flow.source.clone(), http);
        seen.print("identity", &identity);
        let provider = Provider::builder()
            .config(e2e_config())
            .startup(Startup::Wait(WAIT))
            .build_with_fetcher(identity)
            .await
            .unwrap_or_else(|e| panic!("tokio, {}: {e}", flow.name));
        let mut events = provider.events();
        seen.token(provider.credentials());
        let client = EntraClient::new(
            redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
            provider.clone(),
        );
        let mut conn = client.get_multiplexed_connection().await.unwrap();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        if entra_flow(flow) {
            emu.faults()
                .inject(Fault::new(FaultKind::InvalidClient).only(Endpoint::Entra));
        }
        let deadline = Instant::now() + WAIT;
        while seen.tokens.len() < 2 && Instant::now() < deadline {
            provider.refresh_now();
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen.token(provider.credentials());
            if let Some(e) = provider.last_error() {
                seen.display("error", &e);
                seen.print("error", &e);
            }
        }
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        while let Ok(event) = events.try_recv() {
            seen.print("event", &event);
        }
        seen.print("provider", &provider);
        seen.print("client", &client);
        seen.print("credentials", &provider.credentials());
        seen.print("status", &provider.status());
        seen.print("last error", &provider.last_error());
        provider.shutdown().await;
        seen
    })
}

/// The password of the core's PKCS#12 test fixture
const P12_PASSWORD: &str = "fixture-p12-password";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../core/test-fixtures")
}

/// The client-certificate flow from a password-protected PKCS#12 file
fn pkcs12_flow(emu: &redis_entraid_emulator::BlockingEmulator) -> Flow {
    let env: BTreeMap<&str, String> = [
        (vars::AZURE_TENANT_ID, emu.tenant_id().to_owned()),
        (
            vars::AZURE_CLIENT_ID,
            emu.identities().service_principal.client_id.clone(),
        ),
        (vars::AZURE_AUTHORITY_HOST, emu.authority_host()),
        (
            vars::AZURE_CLIENT_CERTIFICATE_PATH,
            fixtures().join("client.p12").display().to_string(),
        ),
        (
            vars::AZURE_CLIENT_CERTIFICATE_PASSWORD,
            P12_PASSWORD.to_owned(),
        ),
    ]
    .into();
    let env: BTreeMap<String, String> = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Flow {
        name: "client certificate (PKCS#12 with a password)",
        source: TokenSource::ClientCertificateFile(ClientCertificateFile::from_env(&env).unwrap()),
    }
}

/// Azure ML's managed identity (`MSI_ENDPOINT` + `MSI_SECRET`, the `secret` header) aimed at
/// the emulator's App Service endpoint
fn azure_ml_source(emu: &redis_entraid_emulator::BlockingEmulator, secret: &str) -> TokenSource {
    let env: BTreeMap<String, String> = [
        (vars::MSI_ENDPOINT.to_owned(), emu.app_service_endpoint()),
        (vars::MSI_SECRET.to_owned(), secret.to_owned()),
    ]
    .into();
    TokenSource::ManagedIdentity(
        ManagedIdentity::detect(&env, ManagedIdentityId::SystemAssigned).unwrap(),
    )
}

/// Service Fabric's managed identity (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER` +
/// `IDENTITY_SERVER_THUMBPRINT`, the `secret` header) aimed at the emulator's https listener
fn service_fabric_source(
    emu: &redis_entraid_emulator::BlockingEmulator,
    secret: &str,
) -> TokenSource {
    let endpoint = format!("{}/msi/token", emu.authority_host().trim_end_matches('/'));
    let env: BTreeMap<String, String> = [
        (vars::IDENTITY_ENDPOINT.to_owned(), endpoint),
        (vars::IDENTITY_HEADER.to_owned(), secret.to_owned()),
        (
            vars::IDENTITY_SERVER_THUMBPRINT.to_owned(),
            emu.server_thumbprint_sha1().to_owned(),
        ),
    ]
    .into();
    let identity = ManagedIdentity::detect(&env, ManagedIdentityId::SystemAssigned).unwrap();
    assert!(
        format!("{identity:?}").contains("ServiceFabric"),
        "detected as Service Fabric: {identity:?}"
    );
    TokenSource::ManagedIdentity(identity)
}

/// One fetch of a source the emulator refuses, on every runtime's executor; what was printed
fn refused(
    source: &TokenSource,
    emu: &redis_entraid_emulator::BlockingEmulator,
    ca: &PathBuf,
) -> String {
    let mut seen = Seen::default();
    let flow = Flow {
        name: "refused",
        source: source.clone(),
    };
    print_source(&mut seen, &flow);
    let timeout = Duration::from_secs(5);
    let http = redis_entraid_blocking::HttpConfig::default()
        .add_root_ca(ca)
        .ignore_ssl_cert_file();
    let fetcher = redis_entraid_blocking::IdentityFetcher::new(source.clone(), &http).unwrap();
    let blocking = redis_entraid_blocking::Fetcher::fetch(&fetcher, timeout);
    assert!(blocking.is_err(), "the emulator refuses the request");
    seen.print("blocking", &blocking);
    // async-std runs the same executor on the `blocking` thread pool
    let fetcher = redis_entraid_async_std::IdentityFetcher::new(source.clone(), &http).unwrap();
    let async_std = smol::block_on(smol::unblock(move || {
        redis_entraid_async_std::Fetcher::fetch(&fetcher, timeout)
    }));
    seen.print("async-std", &async_std);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokio = runtime.block_on(async {
        let client = redis_entraid_tokio::http::HttpClient::builder()
            .ignore_ssl_cert_file()
            .add_root_certificates_pem(emu.ca_cert_pem().as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let identity = redis_entraid_tokio::Identity::with_client(source.clone(), client);
        redis_entraid_tokio::Fetcher::fetch(&identity, timeout).await
    });
    for result in [&blocking, &async_std, &tokio] {
        if let Err(e) = result {
            seen.display("error", e);
        }
    }
    seen.print("tokio", &tokio);
    seen.printed
}

#[test]
fn no_runtime_logs_prints_or_reports_a_secret_of_any_flow() {
    let captured = capture::install();
    let certificate = ClientCertificate::generate("redis-entraid-secrets").unwrap();
    let emu = Emulator::start_blocking(
        Emulator::builder()
            .token_lifetime(Duration::from_secs(30))
            .client_certificate(certificate.certificate_pem())
            .client_certificate(std::fs::read(fixtures().join("leaf.crt")).unwrap()),
    )
    .expect("the emulator starts (is redis-server installed?)");
    let pem =
        std::env::temp_dir().join(format!("redis-entraid-secrets-{}.pem", std::process::id()));
    std::fs::write(&pem, certificate.pem()).unwrap();
    let ca = emu.ca_cert_path().to_owned();

    // Every secret the test knows the value of; assertions and tokens are also found by shape.
    let mut secrets: Vec<(String, String)> = vec![
        (
            "client secret".to_owned(),
            emu.identities()
                .service_principal
                .client_secret
                .expose()
                .to_owned(),
        ),
        (
            "App Service identity header".to_owned(),
            emu.identity_header().to_owned(),
        ),
        (
            "federated assertion".to_owned(),
            std::fs::read_to_string(emu.federated_token_file())
                .unwrap()
                .trim()
                .to_owned(),
        ),
    ];
    let azure_ml_secret = format!(
        "azure-ml-secret-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    secrets.push((
        "Azure ML / MSI secret header".to_owned(),
        azure_ml_secret.clone(),
    ));
    let service_fabric_secret = azure_ml_secret.replace("azure-ml", "service-fabric");
    secrets.push((
        "Service Fabric secret header".to_owned(),
        service_fabric_secret.clone(),
    ));
    secrets.push(("PKCS#12 password".to_owned(), P12_PASSWORD.to_owned()));
    let key_lines: Vec<String> = certificate
        .pem()
        .lines()
        .skip_while(|l| !l.contains("BEGIN PRIVATE KEY"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    assert!(key_lines.len() > 4, "the private key was read");
    for (i, line) in key_lines.iter().enumerate().skip(1).step_by(4) {
        secrets.push((format!("private key, line {i}"), line.clone()));
    }

    let mut printed = String::new();
    let mut tokens = Vec::new();
    let mut cases = 0;
    for runtime in ["blocking", "async-std", "tokio"] {
        let mut all = flows(&emu, &pem).unwrap();
        all.push(pkcs12_flow(&emu));
        for flow in all {
            let seen = match runtime {
                "blocking" => blocking(&flow, &emu, &ca),
                "async-std" => async_std(&flow, &emu, &ca),
                _ => tokio(&flow, &emu),
            };
            assert!(
                seen.tokens.len() >= 2,
                "{runtime}, {}: the case fetched and rotated a token",
                flow.name
            );
            printed.push_str(&seen.printed);
            tokens.extend(seen.tokens);
            cases += 1;
            emu.faults().clear();
        }
    }
    // The legacy `secret` header (Azure ML, App Service 2017): the emulator serves no such
    // endpoint, so the request is refused, but the header crosses every runtime's HTTP client.
    let azure_ml = azure_ml_source(&emu, &azure_ml_secret);
    printed.push_str(&refused(&azure_ml, &emu, &ca));
    cases += 3;
    // Service Fabric's `secret` header, to the emulator's https listener pinned by its
    // certificate's thumbprint (the emulator refuses the request, after the header crossed
    // the HTTP client of every runtime: all three pin the thumbprint).
    let service_fabric = service_fabric_source(&emu, &service_fabric_secret);
    let before = emu.counters().app_service_requests;
    printed.push_str(&refused(&service_fabric, &emu, &ca));
    assert!(
        emu.counters().app_service_requests >= before + 3,
        "the pinned Service Fabric requests reached the emulator (so the header was sent)"
    );
    cases += 3;
    let _ = std::fs::remove_file(&pem);
    for (i, token) in tokens.iter().enumerate() {
        secrets.push((format!("token {i}"), token.clone()));
    }

    let logs = captured.text();
    // The capture saw the libraries at work: the crates below log only through `log`.
    for target in ["ureq", "rustls", "redis_entraid"] {
        assert!(logs.contains(target), "nothing from {target} was captured");
    }
    assert!(
        printed.contains("invalid_client") || logs.contains("invalid_client"),
        "the refused requests were reported"
    );
    let found_in_logs = capture::leaks(&logs, &secrets);
    let found_printed = capture::leaks(&printed, &secrets);
    assert!(
        found_in_logs.is_empty() && found_printed.is_empty(),
        "secrets leaked:\n  in logs: {found_in_logs:#?}\n  in printed values: {found_printed:#?}"
    );
    println!(
        "{cases} cases: {} bytes of logs and {} bytes of printed values checked for {} secrets \
         in {} forms each",
        logs.len(),
        printed.len(),
        secrets.len(),
        capture::forms(&secrets[0].1).len()
    );
}
