//! End to end on the tokio runtime: every identity flow through `Identity` (blocking-io's HTTP client and file reads on the blocking pool),
//! redis-rs multiplexed connections and a RESP3 subscriber opened through `EntraClient`
//! (re-authentication owned by this crate), over real sockets and a real redis-server behind the
//! emulator's expiry-enforcing proxy
//!
//! Six-second tokens, 42 seconds, every identity flow at once; the workload and its checks are
//! `common/async_e2e.rs`, shared with `async_std_e2e.rs`. (The tokio crate's own
//! `tests/end_to_end.rs` covers 1000 connections, the connection manager, the cluster, RESP2
//! subscribers and fred on one flow, with and without faults.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

#[path = "common/async_e2e.rs"]
mod async_e2e;

use std::time::Duration;

use async_e2e::{join_all, report_and_check, run_flow, AsyncRuntime};
use redis_entraid_core::event::Event;
use redis_entraid_emulator::{ClientCertificate, Emulator};
use redis_entraid_tests::{e2e_config, flows, Flow, SCENARIO_DURATION, TOKEN_LIFETIME};
use redis_entraid_tokio::http::HttpClient;
use redis_entraid_tokio::redis_async::{EntraClient, EntraConnection};
use redis_entraid_tokio::{Identity, Provider, Startup};

struct Tokio;

impl AsyncRuntime for Tokio {
    type Provider = Provider;
    type Client = EntraClient;
    type Connection = EntraConnection;
    type Events = tokio::sync::broadcast::Receiver<Event>;
    type Task = std::pin::Pin<Box<dyn std::future::Future<Output = u64>>>;

    async fn provider(flow: Flow, emu: &Emulator) -> Provider {
        let client = HttpClient::builder()
            .ignore_ssl_cert_file()
            .add_root_certificates_pem(emu.ca_cert_pem().as_bytes())
            .unwrap()
            .build()
            .unwrap();
        Provider::builder()
            .config(e2e_config())
            .startup(Startup::Wait(Duration::from_secs(15)))
            .build_with_fetcher(Identity::with_client(flow.source, client))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", flow.name))
    }

    async_e2e::same_in_both_runtimes!();

    fn spawn(task: impl std::future::Future<Output = u64> + Send + 'static) -> Self::Task {
        let handle = tokio::spawn(task);
        Box::pin(async move { handle.await.unwrap() })
    }

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_connections_and_a_resp3_subscriber_survive_rotations_on_every_flow() {
    let certificate = ClientCertificate::generate("redis-entraid-e2e-tokio").unwrap();
    let emu = Emulator::builder()
        .token_lifetime(TOKEN_LIFETIME)
        .client_certificate(certificate.certificate_pem())
        .start()
        .await
        .expect("the emulator starts (is redis-server installed? .ci/install-redis.sh)");
    let pem = std::env::temp_dir().join(format!(
        "redis-entraid-e2e-tokio-{}.pem",
        std::process::id()
    ));
    std::fs::write(&pem, certificate.pem()).unwrap();
    let flows = flows(&emu, &pem).unwrap();
    let runs = flows
        .into_iter()
        .map(|flow| run_flow::<Tokio>(flow, &emu, SCENARIO_DURATION));
    let results = join_all(runs).await;
    let _ = std::fs::remove_file(&pem);
    report_and_check(
        "tokio runtime, 6 s tokens, 42 s, redis-rs multiplexed + RESP3 pub/sub",
        &emu,
        &results,
    );
}
