//! The library's async surface and the binary.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use redis_entraid_emulator::{Emulator, Fault, TokenSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_builder_starts_the_whole_emulator_in_process() {
    let emu = Emulator::builder()
        .token_lifetime(Duration::from_secs(6))
        .start()
        .await
        .unwrap();
    assert!(emu.redis_addr().is_some());
    let token = emu.mint_token(&TokenSpec::for_oid(emu.default_oid()));
    let c = common::claims(&token);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 6);
    emu.faults().inject(Fault::status(500));
    assert_eq!(emu.faults().pending().len(), 1);

    let addr = emu.redis_addr().unwrap();
    let oid = emu.default_oid().to_string();
    let reply = tokio::task::spawn_blocking(move || {
        let mut raw = common::Raw::connect(addr);
        raw.call(&["AUTH", &oid, &token])
    })
    .await
    .unwrap();
    assert_eq!(reply, "+OK\r\n");
    assert_eq!(emu.counters().redis_auth_ok, 1);
    let err = Emulator::start_blocking(Emulator::builder().without_redis()).unwrap_err();
    assert!(err.to_string().contains("start().await"), "{err}");
}

/// Kills the spawned binary however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_prints_the_client_environment_and_serves_the_control_api() {
    let work_dir = std::env::temp_dir().join(format!("emulator-bin-test-{}", std::process::id()));
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_redis-entraid-emulator"))
            .args(["--no-redis", "--token-lifetime", "30", "--work-dir"])
            .arg(&work_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("# control API");
        lines.push(line);
        if done {
            break;
        }
    }
    let text = lines.join("\n");
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
    ] {
        assert!(text.contains(&format!("export {k}='")), "{k} in {text}");
    }
    let url = lines
        .last()
        .unwrap()
        .trim_start_matches("# control API: ")
        .to_string();
    let (status, counters) = common::json_of(common::http_agent().get(&url).call());
    drop(child);
    let _ = std::fs::remove_dir_all(&work_dir);
    assert_eq!(status, 200);
    assert_eq!(counters["tokens_issued"], 0);
}
