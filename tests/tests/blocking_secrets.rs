//! No log line, event or error carries a secret: every token, the client secret and the
//! federated assertion are looked for in everything the blocking runtime logged at TRACE level
//! while it fetched, rotated, failed and recovered
//!
//! One test in its own binary, because it installs the process-wide log subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_entraid_blocking::redis_sync::EntraClient;
use redis_entraid_blocking::{HttpConfig, Provider};
use redis_entraid_core::identity::client_secret::ClientSecret;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_emulator::{Emulator, Endpoint, Fault, FaultKind};
use redis_entraid_tests::e2e_config;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn nothing_logged_printed_or_reported_holds_a_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let emu = Emulator::start_blocking(Emulator::builder().token_lifetime(Duration::from_secs(3)))
        .unwrap();
    let env: BTreeMap<String, String> = emu.env().into_iter().collect();
    let client_secret = env["AZURE_CLIENT_SECRET"].clone();
    let source = TokenSource::ClientSecret(ClientSecret::from_env(&env).unwrap());
    let provider = Provider::builder()
        .config(e2e_config())
        .http(HttpConfig::default().add_root_ca(emu.ca_cert_path()))
        .build(source.clone())
        .unwrap();
    let events = provider.events();
    let client = EntraClient::new(
        redis::Client::open(format!("redis://{}", emu.redis_addr().unwrap())).unwrap(),
        provider.clone(),
    );
    let mut conn = client.get_connection().unwrap();
    let mut tokens = Vec::new();
    emu.faults()
        .inject(Fault::new(FaultKind::InvalidClient).only(Endpoint::Entra));
    emu.faults()
        .inject(Fault::status(503).only(Endpoint::Entra));
    for _ in 0..40 {
        redis::cmd("PING").query::<()>(&mut conn).unwrap();
        if let Some(c) = provider.credentials() {
            let token = c.password().expose_secret().to_owned();
            if !tokens.contains(&token) {
                tokens.push(token);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tokens.len() >= 2, "the test saw rotations");

    // Everything a user could print: logs, events, errors, Debug of every public value.
    let mut seen = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for event in events.try_iter() {
        seen.push_str(&format!("{event:?}\n"));
    }
    seen.push_str(&format!(
        "{provider:?} {client:?} {conn:?} {source:?} {:?}\n",
        provider.credentials()
    ));
    seen.push_str(&format!(
        "{:?} {:?}\n",
        provider.status(),
        provider.last_error()
    ));
    assert!(
        seen.contains("token request failed"),
        "the failures were logged:\n{seen}"
    );
    assert!(
        seen.contains("invalid_client"),
        "the Entra error was logged"
    );
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!seen.contains(signature), "a token leaked into the logs");
    }
    assert!(
        !seen.contains(&client_secret),
        "the client secret leaked into the logs"
    );
    println!(
        "{} bytes of logs and reports checked for {} tokens and the client secret",
        seen.len(),
        tokens.len()
    );
}
