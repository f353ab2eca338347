//! HTTP for identity endpoints: the contract ([`AsyncHttpClient`]) and the default client,
//! [`HttpClient`] (feature `http-client`): redis-entraid-blocking-io's client (ureq with
//! rustls, every rule below kept, Service Fabric pinning included) run on tokio's blocking
//! pool

use std::future::Future;
use std::time::Duration;

use redis_entraid_core::error::TransportError;
use redis_entraid_core::identity::{IdentityRequest, RequestMeta};

/// The largest identity response body read (real ones are a few kilobytes); every runtime has
/// the same cap (the core's `identity::executor::MAX_RESPONSE_BODY`)
pub const MAX_BODY: usize = redis_entraid_core::identity::executor::MAX_RESPONSE_BODY;

/// Sends one identity request; any async HTTP client can be plugged in through it
///
/// Rules (the core's executor contract, `redis_entraid_core::identity::Fetch`):
/// - `meta.local_endpoint`: bypass every proxy, never add `X-Forwarded-For`;
/// - plain `http` only when `meta.allow_plain_http`, otherwise refuse the request;
/// - give up after `timeout`, body included (the executor also enforces it);
/// - read at most [`MAX_BODY`] bytes of body: a larger answer is an error, never buffered;
/// - never follow redirects, never retry (the machine retries whole fetches);
/// - `meta.server_sha1_thumbprint`: accept only a server certificate with that SHA-1;
/// - return every response, whatever its status: the flow classifies errors.
///
/// ```
/// use std::time::Duration;
/// use redis_entraid_core::error::TransportError;
/// use redis_entraid_core::identity::{IdentityRequest, RequestMeta};
/// use redis_entraid_tokio::AsyncHttpClient;
///
/// struct Refuse;
/// impl AsyncHttpClient for Refuse {
///     async fn send(&self, _req: IdentityRequest, _meta: &RequestMeta, _timeout: Duration)
///         -> Result<http::Response<Vec<u8>>, TransportError> {
///         Err(TransportError::permanent("offline"))
///     }
/// }
/// ```
pub trait AsyncHttpClient: Send + Sync + 'static {
    /// Sends `request` and reads the whole response
    ///
    /// `request` prints no secret with `{:?}`; [`IdentityRequest::into_parts`] gives the
    /// method, URI, headers (secret ones marked sensitive) and body to send.
    ///
    /// # Errors
    /// [`TransportError`] when no response arrived (connection, TLS, timeout, policy refusal).
    fn send(
        &self,
        request: IdentityRequest,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> impl Future<Output = Result<http::Response<Vec<u8>>, TransportError>> + Send;
}

/// Refuses plain `http` unless the step allows it (the https rule every client must keep)
///
/// # Errors
/// A permanent [`TransportError`] for a forbidden plain-http URI.
pub fn check_scheme(
    request: &http::Request<Vec<u8>>,
    meta: &RequestMeta,
) -> Result<(), TransportError> {
    match request.uri().scheme_str() {
        Some("https") => Ok(()),
        Some("http") if meta.allow_plain_http => Ok(()),
        _ => Err(TransportError::permanent(format!(
            "refusing to send a token request to {}://{}: only https is allowed for this endpoint",
            request.uri().scheme_str().unwrap_or(""),
            request.uri().host().unwrap_or("")
        ))),
    }
}

/// No client at all (without the `http-client` feature): every request fails
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClient;

impl AsyncHttpClient for NoClient {
    async fn send(
        &self,
        _request: IdentityRequest,
        _meta: &RequestMeta,
        _timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        Err(TransportError::permanent(
            "no HTTP client: enable the `http-client` feature or use Identity::with_client",
        ))
    }
}

#[cfg(feature = "http-client")]
pub use self::default_client::{HttpClient, HttpClientBuilder};

#[cfg(feature = "http-client")]
mod default_client {
    use super::*;

    /// The default client: redis-entraid-blocking-io's (ureq with rustls, the proxy, https,
    /// redirect, timeout, body-cap and Service Fabric pinning rules of every runtime), each
    /// request on tokio's blocking pool
    ///
    /// The client enforces each request's timeout itself, so a blocking-pool thread outlives an
    /// abandoned request by at most that long. Clones share the connection pools.
    #[derive(Clone, Debug)]
    pub struct HttpClient {
        inner: redis_entraid_blocking_io::HttpClient,
    }

    /// Builds an [`HttpClient`]
    #[derive(Debug, Default)]
    pub struct HttpClientBuilder {
        inner: redis_entraid_blocking_io::HttpClientBuilder,
    }

    impl HttpClient {
        /// A builder
        pub fn builder() -> HttpClientBuilder {
            HttpClientBuilder::default()
        }

        /// The client [`ProviderBuilder::build`](crate::ProviderBuilder::build) uses: the
        /// public roots, `config`'s extra root CA files and (unless `config` says otherwise)
        /// `SSL_CERT_FILE`
        ///
        /// # Errors
        /// [`TransportError`] when a CA file cannot be read or parsed.
        pub fn from_config(
            config: &redis_entraid_core::identity::HttpConfig,
        ) -> Result<Self, TransportError> {
            redis_entraid_blocking_io::HttpClient::from_config(config).map(Self::from)
        }
    }

    impl From<redis_entraid_blocking_io::HttpClient> for HttpClient {
        fn from(inner: redis_entraid_blocking_io::HttpClient) -> Self {
            Self { inner }
        }
    }

    impl HttpClientBuilder {
        /// Trusts these PEM certificates as well as the built-in roots
        ///
        /// # Errors
        /// [`TransportError`] when the PEM holds a malformed certificate or none at all.
        pub fn add_root_certificates_pem(self, pem: &[u8]) -> Result<Self, TransportError> {
            Ok(Self {
                inner: self.inner.add_root_certificates_pem(pem)?,
            })
        }

        /// Do not read `SSL_CERT_FILE` (read by default when set)
        #[must_use]
        pub fn ignore_ssl_cert_file(self) -> Self {
            Self {
                inner: self.inner.ignore_ssl_cert_file(),
            }
        }

        /// The TCP + TLS connect timeout (default 5 s)
        #[must_use]
        pub fn connect_timeout(self, timeout: Duration) -> Self {
            Self {
                inner: self.inner.connect_timeout(timeout),
            }
        }

        /// Builds the client: reads `SSL_CERT_FILE` (unless ignored) and the proxy variables
        /// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper or lower case) now
        ///
        /// # Errors
        /// [`TransportError`] when `SSL_CERT_FILE` names an unreadable or invalid file, or a
        /// root is not a usable CA certificate.
        pub fn build(self) -> Result<HttpClient, TransportError> {
            self.inner.build().map(HttpClient::from)
        }
    }

    impl AsyncHttpClient for HttpClient {
        async fn send(
            &self,
            request: IdentityRequest,
            meta: &RequestMeta,
            timeout: Duration,
        ) -> Result<http::Response<Vec<u8>>, TransportError> {
            let client = self.inner.clone();
            let meta = meta.clone();
            tokio::task::spawn_blocking(move || client.send(request, &meta, timeout))
                .await
                .map_err(|e| {
                    TransportError::new("the identity request's blocking task failed")
                        .with_source(e)
                })?
        }
    }
}
