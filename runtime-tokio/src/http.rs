//! HTTP for identity endpoints: the contract ([`AsyncHttpClient`]) and the default client

use std::future::Future;
use std::time::Duration;

use redis_entraid_core::error::TransportError;
use redis_entraid_core::identity::{IdentityRequest, RequestMeta};

/// The largest identity response body read (real ones are a few kilobytes); the blocking
/// runtime has the same cap
pub const MAX_BODY: usize = 1024 * 1024;

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

/// No client at all (without the `reqwest` feature): every request fails
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
            "no HTTP client: enable the `reqwest` feature or use Identity::with_client",
        ))
    }
}

#[cfg(feature = "reqwest")]
pub use self::reqwest_client::{ReqwestClient, ReqwestClientBuilder};

#[cfg(feature = "reqwest")]
mod reqwest_client {
    use super::*;

    /// reqwest with rustls: two clients, one that honours proxy settings for remote
    /// endpoints and one that bypasses every proxy for local identity endpoints; no
    /// redirects; connect and request timeouts always set
    #[derive(Clone, Debug)]
    pub struct ReqwestClient {
        direct: reqwest::Client,
        proxied: reqwest::Client,
    }

    /// Builds a [`ReqwestClient`]
    #[derive(Debug, Default)]
    pub struct ReqwestClientBuilder {
        roots: Vec<reqwest::Certificate>,
        ignore_ssl_cert_file: bool,
        connect_timeout: Option<Duration>,
    }

    impl ReqwestClient {
        /// A builder
        pub fn builder() -> ReqwestClientBuilder {
            ReqwestClientBuilder::default()
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
            let mut builder = Self::builder();
            for path in config.extra_roots() {
                let pem = std::fs::read(path).map_err(|e| {
                    TransportError::permanent(format!("cannot read {}", path.display()))
                        .with_source(e)
                })?;
                builder = builder.add_root_certificates_pem(&pem)?;
            }
            if !config.reads_ssl_cert_file() {
                builder = builder.ignore_ssl_cert_file();
            }
            builder.build()
        }
    }

    impl ReqwestClientBuilder {
        /// Trusts these PEM certificates as well as the built-in roots
        ///
        /// # Errors
        /// [`TransportError`] when the PEM cannot be parsed.
        pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, TransportError> {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                TransportError::permanent("cannot parse the root certificate PEM").with_source(e)
            })?;
            self.roots.extend(certs);
            Ok(self)
        }

        /// Do not read `SSL_CERT_FILE` (read by default when set)
        pub fn ignore_ssl_cert_file(mut self) -> Self {
            self.ignore_ssl_cert_file = true;
            self
        }

        /// The TCP + TLS connect timeout (default 5 s)
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.connect_timeout = Some(timeout);
            self
        }

        /// Builds the two underlying clients
        ///
        /// # Errors
        /// [`TransportError`] when `SSL_CERT_FILE` names an unreadable file or reqwest
        /// cannot build its TLS configuration.
        pub fn build(mut self) -> Result<ReqwestClient, TransportError> {
            if !self.ignore_ssl_cert_file {
                if let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
                    let pem = std::fs::read(&path).map_err(|e| {
                        TransportError::permanent(format!(
                            "cannot read SSL_CERT_FILE {}",
                            std::path::Path::new(&path).display()
                        ))
                        .with_source(e)
                    })?;
                    self = self.add_root_certificates_pem(&pem)?;
                }
            }
            let connect = self.connect_timeout.unwrap_or(Duration::from_secs(5));
            let make = |direct: bool| {
                let mut b = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(connect)
                    .timeout(Duration::from_secs(30))
                    .use_rustls_tls();
                if direct {
                    b = b.no_proxy();
                }
                for root in &self.roots {
                    b = b.add_root_certificate(root.clone());
                }
                b.build().map_err(|e| {
                    TransportError::permanent("cannot build the HTTP client").with_source(e)
                })
            };
            Ok(ReqwestClient {
                direct: make(true)?,
                proxied: make(false)?,
            })
        }
    }

    impl AsyncHttpClient for ReqwestClient {
        async fn send(
            &self,
            request: IdentityRequest,
            meta: &RequestMeta,
            timeout: Duration,
        ) -> Result<http::Response<Vec<u8>>, TransportError> {
            check_scheme(&request, meta)?;
            if meta.server_sha1_thumbprint.is_some() {
                // reqwest offers no per-request certificate pinning; refusing is safer than
                // trusting a self-signed endpoint blindly.
                return Err(TransportError::permanent(
                    "this endpoint needs server certificate pinning (Service Fabric), which the \
                     reqwest client does not do: supply an AsyncHttpClient that pins the SHA-1 \
                     thumbprint",
                ));
            }
            let client = if meta.local_endpoint {
                &self.direct
            } else {
                &self.proxied
            };
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let mut builder = client
                .request(parts.method, url.as_str())
                .headers(parts.headers)
                .timeout(timeout);
            if !body.is_empty() {
                builder = builder.body(body);
            }
            let host = parts.uri.host().unwrap_or("").to_owned();
            let response = builder.send().await.map_err(|e| transport(&host, e))?;
            let status = response.status();
            let headers = response.headers().clone();
            let too_large = || {
                TransportError::new(format!(
                    "the answer from {host} is larger than the {MAX_BODY} bytes allowed"
                ))
            };
            // Refuse early when the server says it will send too much; otherwise count what
            // arrives (a chunked body has no length). A slow drip ends at the request timeout.
            if response
                .content_length()
                .is_some_and(|n| n > MAX_BODY as u64)
            {
                return Err(too_large());
            }
            let mut body = Vec::new();
            let mut response = response;
            while let Some(chunk) = response.chunk().await.map_err(|e| transport(&host, e))? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        }
    }

    fn transport(host: &str, e: reqwest::Error) -> TransportError {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        // reqwest's error text holds the URL, which never carries secrets for these flows
        // (secrets travel in bodies and headers); keep it as the source.
        TransportError::new(format!("request to {host} {what}")).with_source(e.without_url())
    }
}
