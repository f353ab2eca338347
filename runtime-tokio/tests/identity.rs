//! The identity executor and the default HTTP client against the emulator: proxy bypass for local
//! endpoints, `SSL_CERT_FILE`, custom roots, workload identity files, the default chain
//!
//! One test function: it changes the process environment (proxy variables, `SSL_CERT_FILE`).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::TokenSource as Flow;
use redis_entraid_emulator::Emulator;
use redis_entraid_tokio::http::HttpClient;
use redis_entraid_tokio::{Fetcher, Identity, Provider, Startup};

fn chain(emu: &Emulator, keep: &[&str]) -> Flow {
    let env: BTreeMap<String, String> = emu
        .env()
        .into_iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .collect();
    Flow::DefaultChain(DefaultChain::from_env(&env))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_flow_fetches_through_a_dead_proxy_and_https_honours_ssl_cert_file() {
    let emu = Emulator::builder().without_redis().start().await.unwrap();
    // A proxy that does not exist: local identity endpoints must never go through it.
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        std::env::set_var(var, "http://127.0.0.1:9");
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");

    // IMDS (plain http, probe first), App Service (plain http).
    let imds = Identity::new(chain(&emu, &["AZURE_POD_IDENTITY_AUTHORITY_HOST"])).unwrap();
    let token = imds.fetch(Duration::from_secs(5)).await.unwrap();
    assert!(!token.access_token.expose_secret().is_empty());
    let app = Identity::new(chain(&emu, &["IDENTITY_ENDPOINT", "IDENTITY_HEADER"])).unwrap();
    app.fetch(Duration::from_secs(5)).await.unwrap();

    // Client secret against the emulator's https authority: unknown CA without help...
    std::env::remove_var("SSL_CERT_FILE");
    let secret = [
        "AZURE_AUTHORITY_HOST",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
    ];
    let untrusted = Identity::new(chain(&emu, &secret)).unwrap();
    let err = untrusted.fetch(Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    // ...trusted through SSL_CERT_FILE...
    std::env::set_var("SSL_CERT_FILE", emu.ca_cert_path());
    let trusted = Identity::new(chain(&emu, &secret)).unwrap();
    trusted.fetch(Duration::from_secs(5)).await.unwrap();
    std::env::remove_var("SSL_CERT_FILE");
    // ...or through the builder.
    let client = HttpClient::builder()
        .add_root_certificates_pem(emu.ca_cert_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    Identity::with_client(chain(&emu, &secret), client.clone())
        .fetch(Duration::from_secs(5))
        .await
        .unwrap();

    // Workload identity: the federated token file is read on the blocking pool.
    let workload = [
        "AZURE_AUTHORITY_HOST",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
    ];
    Identity::with_client(chain(&emu, &workload), client.clone())
        .fetch(Duration::from_secs(5))
        .await
        .unwrap();

    // A whole provider over the chain, from a real environment map.
    let provider = Provider::builder()
        .startup(Startup::FailFast)
        .build_with_fetcher(Identity::with_client(chain(&emu, &secret), client))
        .await
        .unwrap();
    assert!(provider.credentials().is_some());
    assert!(emu.counters().imds_requests >= 1);
    assert!(emu.counters().app_service_requests >= 1);
}

/// What the recording client saw: path, local endpoint, probe, timeout
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, bool, bool, Duration)>>>;

/// A user-supplied client: records how each request must be sent, delegates to the default client
#[derive(Clone)]
struct Recording {
    inner: HttpClient,
    seen: Seen,
}

impl redis_entraid_tokio::AsyncHttpClient for Recording {
    async fn send(
        &self,
        request: redis_entraid_core::identity::IdentityRequest,
        meta: &redis_entraid_core::identity::RequestMeta,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, redis_entraid_core::error::TransportError> {
        self.seen.lock().unwrap().push((
            request.uri().path().to_owned(),
            meta.local_endpoint,
            meta.probe,
            timeout,
        ));
        self.inner.send(request, meta, timeout).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_supplied_client_gets_every_request_with_its_rules_and_timeout() {
    let emu = Emulator::builder().without_redis().start().await.unwrap();
    let client = Recording {
        inner: HttpClient::builder()
            .ignore_ssl_cert_file()
            .build()
            .unwrap(),
        seen: Default::default(),
    };
    let imds = Identity::with_client(
        chain(&emu, &["AZURE_POD_IDENTITY_AUTHORITY_HOST"]),
        client.clone(),
    );
    imds.fetch(Duration::from_secs(4)).await.unwrap();
    let seen = client.seen.lock().unwrap().clone();
    // A pod-identity host is not probed: one token request, local (no proxy), within the
    // fetch's deadline.
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (path, local, probe, timeout) = &seen[0];
    assert!(
        path.contains("/metadata/identity") && *local && !*probe,
        "{seen:?}"
    );
    assert!(*timeout <= Duration::from_secs(4) && *timeout > Duration::from_secs(3));
}
