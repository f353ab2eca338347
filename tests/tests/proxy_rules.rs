//! Every proxy rule, on both identity executor backends (blocking-io's `IdentityFetcher`, which
//! the blocking and async-std runtimes run, and tokio's `Identity` over the default client), against a local
//! recording proxy: `HTTPS_PROXY` (and `https_proxy`) for https, never `HTTP_PROXY` for https,
//! `NO_PROXY` honoured (exact host and domain suffix), and local identity endpoints never
//! proxied whatever is set
//!
//! A binary of its own, because it sets proxy variables for the whole process; its tests take
//! turns (a lock), each setting exactly the variables it reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_entraid_core::identity::client_secret::ClientSecret;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource;

#[path = "common/backend.rs"]
mod backend;

use backend::{Backend, BlockingIo, TokioIo};

/// A forward / CONNECT proxy that records the request line of every connection and refuses it
fn recording_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            record.lock().unwrap().push(line.trim_end().to_owned());
            let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (url, seen)
}

const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Sets exactly these proxy variables (the caller holds [`SERIAL`])
fn proxy_env(vars: &[(&str, &str)]) {
    for name in PROXY_VARS {
        std::env::remove_var(name);
    }
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
}

fn remote_secret() -> TokenSource {
    let env: BTreeMap<&str, &str> = [
        ("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000001"),
        ("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000002"),
        ("AZURE_CLIENT_SECRET", "not-a-real-secret"),
        ("AZURE_AUTHORITY_HOST", "https://login.example.test"),
    ]
    .into();
    TokenSource::ClientSecret(ClientSecret::from_env(&env).unwrap())
}

/// Managed identity endpoints at names that are not loopback, so only the local-endpoint rule
/// (not a loopback exception) keeps them off the proxy
fn local_sources() -> Vec<TokenSource> {
    let imds: BTreeMap<&str, &str> = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "http://imds.example.test",
    )]
    .into();
    let app_service: BTreeMap<&str, &str> = [
        (
            "IDENTITY_ENDPOINT",
            "http://appservice.example.test/msi/token",
        ),
        ("IDENTITY_HEADER", "not-a-real-header"),
    ]
    .into();
    [imds, app_service]
        .iter()
        .map(|env| {
            TokenSource::ManagedIdentity(
                ManagedIdentity::detect(env, ManagedIdentityId::SystemAssigned).unwrap(),
            )
        })
        .collect()
}

/// What the proxy was asked while `source` fetched once (the fetch itself fails: no such host)
fn asked<B: Backend>(source: TokenSource, seen: &Mutex<Vec<String>>) -> Vec<String> {
    seen.lock().unwrap().clear();
    // The fetcher reads the proxy variables when it is built.
    let fetcher = B::fetcher(source);
    assert!(B::fetch(&fetcher, Duration::from_secs(3)).is_err());
    std::mem::take(&mut *seen.lock().unwrap())
}

/// The process's proxy variables are this binary's to set, one test at a time
static SERIAL: Mutex<()> = Mutex::new(());

fn https_proxy_for_https_no_proxy_honoured_local_endpoints_never_proxied<B: Backend>() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (proxy, seen) = recording_proxy();

    proxy_env(&[("HTTPS_PROXY", &proxy)]);
    let lines = asked::<B>(remote_secret(), &seen);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("CONNECT login.example.test:443")),
        "HTTPS_PROXY is used for https: {lines:?}"
    );

    proxy_env(&[("https_proxy", &proxy)]);
    let lines = asked::<B>(remote_secret(), &seen);
    assert!(
        !lines.is_empty(),
        "https_proxy (lower case) is used too: {lines:?}"
    );

    proxy_env(&[("HTTP_PROXY", &proxy)]);
    assert_eq!(
        asked::<B>(remote_secret(), &seen),
        Vec::<String>::new(),
        "HTTP_PROXY is not used for https"
    );

    for no_proxy in [
        "login.example.test",
        ".example.test",
        "example.test",
        "other.test,login.example.test",
    ] {
        proxy_env(&[("HTTPS_PROXY", &proxy), ("NO_PROXY", no_proxy)]);
        assert_eq!(
            asked::<B>(remote_secret(), &seen),
            Vec::<String>::new(),
            "NO_PROXY={no_proxy} is honoured"
        );
    }
    proxy_env(&[("HTTPS_PROXY", &proxy), ("NO_PROXY", "other.test")]);
    assert!(
        !asked::<B>(remote_secret(), &seen).is_empty(),
        "NO_PROXY for another host does not bypass the proxy"
    );

    proxy_env(&[
        ("HTTPS_PROXY", &proxy),
        ("HTTP_PROXY", &proxy),
        ("ALL_PROXY", &proxy),
    ]);
    for source in local_sources() {
        let name = source.name();
        assert_eq!(
            asked::<B>(source, &seen),
            Vec::<String>::new(),
            "{name}: local identity endpoints never go through a proxy"
        );
    }
    proxy_env(&[]);
}

mod blocking_io {
    #[test]
    fn https_proxy_for_https_no_proxy_honoured_local_endpoints_never_proxied() {
        super::https_proxy_for_https_no_proxy_honoured_local_endpoints_never_proxied::<
            super::BlockingIo,
        >();
    }
}

mod tokio_io {
    #[test]
    fn https_proxy_for_https_no_proxy_honoured_local_endpoints_never_proxied() {
        super::https_proxy_for_https_no_proxy_honoured_local_endpoints_never_proxied::<
            super::TokioIo,
        >();
    }
}
