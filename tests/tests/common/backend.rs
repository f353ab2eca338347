//! The two identity executor backends behind one trait, for the fetch-level rules: blocking-io's
//! `IdentityFetcher` (which the blocking and async-std runtimes both run) and tokio's
//! `Identity` (blocking-io's HTTP client, files and processes on tokio's blocking pool)

#![allow(dead_code)] // each test binary uses its own part

use std::sync::OnceLock;
use std::time::Duration;

use redis_entraid_blocking::HttpConfig;
use redis_entraid_core::error::FetchError;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::token::TokenResponse;

/// The runtime every tokio test here runs on (two workers, as on the test machine)
pub(crate) fn tokio_runtime() -> &'static ::tokio::runtime::Runtime {
    static RUNTIME: OnceLock<::tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        ::tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// An identity executor's I/O backend, its fetch run to completion
pub(crate) trait Backend {
    type Fetcher;
    /// For the fake CLI's folder name
    const NAME: &'static str;
    fn fetcher(source: TokenSource) -> Self::Fetcher;
    fn fetch(fetcher: &Self::Fetcher, timeout: Duration) -> Result<TokenResponse, FetchError>;
}

/// blocking-io's, run by the blocking and async-std runtimes
pub(crate) struct BlockingIo;

impl Backend for BlockingIo {
    type Fetcher = redis_entraid_blocking::IdentityFetcher;
    const NAME: &'static str = "blocking-io";
    fn fetcher(source: TokenSource) -> Self::Fetcher {
        redis_entraid_blocking::IdentityFetcher::new(
            source,
            &HttpConfig::default().ignore_ssl_cert_file(),
        )
        .unwrap()
    }
    fn fetch(fetcher: &Self::Fetcher, timeout: Duration) -> Result<TokenResponse, FetchError> {
        use redis_entraid_blocking::Fetcher as _;
        fetcher.fetch(timeout)
    }
}

/// tokio's (blocking-io's HTTP client, files and processes on tokio's blocking pool)
pub(crate) struct TokioIo;

impl Backend for TokioIo {
    type Fetcher = redis_entraid_tokio::Identity<redis_entraid_tokio::http::HttpClient>;
    const NAME: &'static str = "tokio";
    fn fetcher(source: TokenSource) -> Self::Fetcher {
        let client = redis_entraid_tokio::http::HttpClient::builder()
            .ignore_ssl_cert_file()
            .build()
            .unwrap();
        redis_entraid_tokio::Identity::with_client(source, client)
    }
    fn fetch(fetcher: &Self::Fetcher, timeout: Duration) -> Result<TokenResponse, FetchError> {
        use redis_entraid_tokio::Fetcher as _;
        tokio_runtime().block_on(fetcher.fetch(timeout))
    }
}
