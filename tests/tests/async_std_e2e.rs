//! End to end on the async-io runtime (async-std / smol): redis-rs multiplexed connections and
//! a RESP3 subscriber opened through `EntraClient` (re-authentication owned by this crate),
//! over real sockets and a real redis-server behind the emulator's expiry-enforcing proxy
//!
//! Six-second tokens, 42 seconds, every identity flow at once; each rotation's fan-out
//! (token arrival to every connection's `AUTH` OK, and the margin left on the replaced token)
//! is printed. The workload and its checks are `common/async_e2e.rs`, shared with
//! `tokio_e2e.rs`. (The async-std crate's own `tests/recovery.rs` covers outages past expiry,
//! refused re-`AUTH`s and the connection manager.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

#[path = "common/async_e2e.rs"]
mod async_e2e;

use std::time::Duration;

use async_e2e::{join_all, report_and_check, run_flow, AsyncRuntime};
use redis_entraid_async_std::redis::{EntraClient, EntraConnection};
use redis_entraid_async_std::{HttpConfig, Provider, Startup};
use redis_entraid_core::event::Event;
use redis_entraid_emulator::{ClientCertificate, Emulator};
use redis_entraid_tests::{e2e_config, flows, Flow, SCENARIO_DURATION, TOKEN_LIFETIME};

/// Drivers and the workers run on smol's global executor (where redis-rs spawns the
/// connections' own tasks too)
struct Smol;

impl AsyncRuntime for Smol {
    type Provider = Provider;
    type Client = EntraClient;
    type Connection = EntraConnection;
    type Events = async_broadcast::Receiver<Event>;
    type Task = smol::Task<u64>;

    async fn provider(flow: Flow, emu: &Emulator) -> Provider {
        let ca = emu.ca_cert_path().to_owned();
        Provider::builder()
            .config(e2e_config())
            .http(HttpConfig::default().add_root_ca(ca).ignore_ssl_cert_file())
            .startup(Startup::Wait(Duration::from_secs(15)))
            .build(flow.source, |driver| smol::spawn(driver).detach())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", flow.name))
    }

    async_e2e::same_in_both_runtimes!();

    fn spawn(task: impl std::future::Future<Output = u64> + Send + 'static) -> smol::Task<u64> {
        smol::spawn(task)
    }

    async fn sleep(duration: Duration) {
        smol::Timer::after(duration).await;
    }
}

#[test]
fn multiplexed_connections_and_a_resp3_subscriber_survive_rotations_on_every_flow() {
    let certificate = ClientCertificate::generate("redis-entraid-e2e-async").unwrap();
    let emu = Emulator::start_blocking(
        Emulator::builder()
            .token_lifetime(TOKEN_LIFETIME)
            .client_certificate(certificate.certificate_pem()),
    )
    .expect("the emulator starts (is redis-server installed? .ci/install-redis.sh)");
    let pem = std::env::temp_dir().join(format!(
        "redis-entraid-e2e-async-{}.pem",
        std::process::id()
    ));
    std::fs::write(&pem, certificate.pem()).unwrap();
    let flows = flows(&emu, &pem).unwrap();
    // The five flows run concurrently on this thread's task.
    let runs = flows
        .into_iter()
        .map(|flow| run_flow::<Smol>(flow, &emu, SCENARIO_DURATION));
    let results = smol::block_on(join_all(runs));
    let _ = std::fs::remove_file(&pem);
    report_and_check(
        "async-io runtime (smol executor), 6 s tokens, 42 s, EntraClient multiplexed + RESP3 pub/sub",
        &emu,
        &results,
    );
}
