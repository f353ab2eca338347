//! The HTTP rules of identity requests, against the emulator: local endpoints bypass a proxy,
//! remote ones use it, plain http is refused for remote endpoints, custom CAs are honoured
//!
//! One test in its own binary, because it sets proxy variables for the whole process.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use redis_entraid_blocking::{Fetcher, HttpConfig, IdentityFetcher};
use redis_entraid_core::identity::client_secret::ClientSecret;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource;
use redis_entraid_emulator::Emulator;

#[test]
fn local_endpoints_bypass_the_proxy_remote_ones_use_it_and_https_is_enforced() {
    let emu = Emulator::start_blocking(Emulator::builder().without_redis()).unwrap();
    let env: BTreeMap<String, String> = emu.env().into_iter().collect();
    let trust = HttpConfig::default()
        .add_root_ca(emu.ca_cert_path())
        .ignore_ssl_cert_file();
    let secret = || TokenSource::ClientSecret(ClientSecret::from_env(&env).unwrap());
    let imds: BTreeMap<String, String> = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
        emu.imds_endpoint(),
    )]
    .into();
    let imds = TokenSource::ManagedIdentity(
        ManagedIdentity::detect(&imds, ManagedIdentityId::SystemAssigned).unwrap(),
    );

    // Without a proxy, both work (the Entra endpoint over https with the emulator's CA).
    let timeout = Duration::from_secs(5);
    assert!(IdentityFetcher::new(imds.clone(), &trust)
        .unwrap()
        .fetch(timeout)
        .is_ok());
    assert!(IdentityFetcher::new(secret(), &trust)
        .unwrap()
        .fetch(timeout)
        .is_ok());

    // Without the CA, the emulator's certificate is not trusted.
    let untrusted =
        IdentityFetcher::new(secret(), &HttpConfig::default().ignore_ssl_cert_file()).unwrap();
    let err = untrusted.fetch(timeout).unwrap_err();
    assert!(
        err.is_retryable() || err.to_string().contains("failed"),
        "{err}"
    );

    // A proxy that records what it is asked and answers nothing.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let asked = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let (stream, _) = proxy.accept().unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    });
    set_proxy(&proxy_url);
    // Local endpoints (IMDS; also a loopback emulator authority) never go through it.
    assert!(
        IdentityFetcher::new(imds, &trust)
            .unwrap()
            .fetch(timeout)
            .is_ok(),
        "IMDS bypasses the proxy"
    );
    assert!(
        IdentityFetcher::new(secret(), &trust)
            .unwrap()
            .fetch(timeout)
            .is_ok(),
        "loopback bypasses the proxy"
    );
    // A remote authority does.
    let mut remote = env.clone();
    remote.insert(
        "AZURE_AUTHORITY_HOST".to_owned(),
        "https://login.example.test".to_owned(),
    );
    let remote = TokenSource::ClientSecret(ClientSecret::from_env(&remote).unwrap());
    assert!(IdentityFetcher::new(remote, &trust)
        .unwrap()
        .fetch(timeout)
        .is_err());
    let line = asked.join().unwrap();
    assert!(
        line.starts_with("CONNECT login.example.test:443"),
        "the proxy was asked: {line:?}"
    );

    // An authority over plain http that is not loopback is refused before any request.
    let mut remote = env.clone();
    remote.insert(
        "AZURE_AUTHORITY_HOST".to_owned(),
        "http://login.example.test".to_owned(),
    );
    assert!(
        ClientSecret::from_env(&remote).is_err(),
        "plain http authority refused"
    );

    // A missing CA file is a clear error, not a panic.
    let err = IdentityFetcher::new(
        secret(),
        &HttpConfig::default().add_root_ca("/nonexistent/ca.pem"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

fn set_proxy(proxy: &str) {
    // This binary holds this one test, so no other thread reads the environment meanwhile.
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
    ] {
        std::env::set_var(name, proxy);
    }
}
