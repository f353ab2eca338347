//! HTTP for identity requests, through ureq 3 over rustls (ring), with the rules every runtime
//! keeps
//!
//! - Local identity endpoints (IMDS, App Service, Arc, ...) never go through a proxy; remote
//!   ones (Entra) use `HTTPS_PROXY` for https and `HTTP_PROXY` for http (`ALL_PROXY` for
//!   either when the specific one is unset), and honour `NO_PROXY` (curl's rules: a domain
//!   matches itself and its subdomains, IP addresses and CIDR blocks, `*`); all read when the
//!   client is built ([`proxy`]).
//! - Plain `http` only where the flow allows it (local endpoints, a loopback emulator).
//! - A custom root CA can be added, and `SSL_CERT_FILE` is honoured, on top of the public roots.
//! - Every request has a timeout; redirects are never followed.
//! - Service Fabric's self-signed endpoint is accepted only with the pinned SHA-1 thumbprint.
//! - At most [`MAX_RESPONSE_BODY`] bytes of answer are read.
//!
//! TLS is rustls with our own `ClientConfig` (roots, pinning), plugged into ureq as the last
//! connector of its chain ([`TlsConnector`]): ureq handles HTTP/1.1, CONNECT proxies, pooling
//! and timeouts; rustls does the TLS; nothing here speaks either protocol.
//!
//! Logging: ureq logs requests and responses at DEBUG with every header value redacted but
//! a few harmless ones (unlike ureq 2, which logged every header but `Authorization`), and no
//! body. Its protocol crate (`ureq_proto` 0.7) also hex-dumps every byte it writes and reads,
//! secret headers, form bodies and token answers included, at TRACE through the `log` crate.
//! A library cannot filter another crate's `log` records at run time, so this crate's
//! `secret-safe-log` feature (on by default in every runtime) turns on `log`'s
//! `max_level_debug`: in an application that uses it, no `log` record above DEBUG exists at
//! all (from any crate; `tracing` events are not affected, and a `release_max_level_*` feature
//! set by the application would win in release builds).
//! `tests/tests/secrets.rs` puts hex dumps back together and fails if a secret is in one.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis_entraid_core::error::TransportError;
use redis_entraid_core::identity::executor::MAX_RESPONSE_BODY;
use redis_entraid_core::identity::HttpConfig;
use redis_entraid_core::identity::{IdentityRequest, RequestMeta};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout,
    TcpConnector, Transport, TransportAdapter,
};

mod proxy;

/// The answer size cap, as a `u64` for readers
const MAX_BODY: u64 = MAX_RESPONSE_BODY as u64;

/// The longest a request may take when the caller gives no shorter timeout
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client for identity endpoints: ureq with rustls (ring), keeping every rule of the
/// core's executor contract (see the module documentation of `redis_entraid_core::identity`)
///
/// One client holds a direct agent (local endpoints, `NO_PROXY` hosts) and one per proxy read
/// from the environment when it was built; clones share them (and their connection pools).
///
/// ```no_run
/// use redis_entraid_blocking_io::HttpClient;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = HttpClient::builder()
///     .add_root_certificates_pem(&std::fs::read("/etc/ssl/emulator-ca.pem")?)?
///     .ignore_ssl_cert_file()
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    direct: ureq::Agent,
    proxies: proxy::Proxies<ureq::Agent>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Proxy URLs may carry credentials: only whether there are proxies is shown.
        f.debug_struct("HttpClient")
            .field("https_proxy", &self.inner.proxies.https.is_some())
            .field("http_proxy", &self.inner.proxies.http.is_some())
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds an [`HttpClient`]
#[derive(Debug, Default)]
pub struct HttpClientBuilder {
    roots: Vec<CertificateDer<'static>>,
    ignore_ssl_cert_file: bool,
    connect_timeout: Option<Duration>,
}

impl HttpClientBuilder {
    /// Trusts these PEM certificates as well as the built-in roots
    ///
    /// # Errors
    /// [`TransportError`] when the PEM holds a malformed certificate or none at all.
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, TransportError> {
        let before = self.roots.len();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| {
                TransportError::permanent(format!(
                    "the root certificate PEM holds a malformed certificate: {e}"
                ))
            })?;
            self.roots.push(cert);
        }
        if self.roots.len() == before {
            return Err(TransportError::permanent(
                "the root certificate PEM holds no certificate",
            ));
        }
        Ok(self)
    }

    /// Do not read `SSL_CERT_FILE` (read by default when set)
    #[must_use]
    pub fn ignore_ssl_cert_file(mut self) -> Self {
        self.ignore_ssl_cert_file = true;
        self
    }

    /// The TCP + TLS connect timeout (default 5 s; a request's own timeout still applies)
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Builds the client: reads `SSL_CERT_FILE` (unless ignored) and the proxy variables
    /// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper or lower case) now
    ///
    /// # Errors
    /// [`TransportError`] when `SSL_CERT_FILE` names an unreadable or invalid file, or a root
    /// is not a usable CA certificate. An unusable proxy variable is ignored with a warning.
    pub fn build(self) -> Result<HttpClient, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in self.roots {
            roots.add(cert).map_err(|e| {
                TransportError::permanent(format!("a root certificate is not usable: {e}"))
            })?;
        }
        if !self.ignore_ssl_cert_file {
            if let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
                load_pem(Path::new(&path), &mut roots)?;
            }
        }
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(tls_error)?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let connect_timeout = self.connect_timeout.unwrap_or(Duration::from_secs(5));
        let agent = |proxy: Option<ureq::Proxy>| agent(&tls, proxy, connect_timeout);
        let proxies = proxy::Proxies::from_env().map(|p| agent(Some(p)));
        Ok(HttpClient {
            inner: Arc::new(Inner {
                direct: agent(None),
                proxies,
                connect_timeout,
            }),
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
    TransportError::permanent("could not set up TLS for identity requests").with_source(e)
}

fn load_pem(path: &Path, roots: &mut rustls::RootCertStore) -> Result<(), TransportError> {
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        TransportError::permanent(format!("cannot read CA file {}: {e}", path.display()))
    })?;
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|e| {
            TransportError::permanent(format!(
                "CA file {} holds a malformed certificate: {e}",
                path.display()
            ))
        })?;
        roots
            .add(cert)
            .map_err(|e| TransportError::permanent(format!("CA file {}: {e}", path.display())))?;
        added += 1;
    }
    if added == 0 {
        return Err(TransportError::permanent(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(())
}

/// An agent with our TLS, no redirects, every status an answer, through `proxy` if any
fn agent(
    tls: &Arc<rustls::ClientConfig>,
    proxy: Option<ureq::Proxy>,
    connect_timeout: Duration,
) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(connect_timeout))
        .timeout_global(Some(MAX_TIMEOUT))
        .user_agent(concat!("redis-entraid/", env!("CARGO_PKG_VERSION")))
        .proxy(proxy)
        // ureq's default, pinned: a request leaves in as many writes as ureq makes (head,
        // then a form body) and, with Nagle's algorithm on, the second would wait for the
        // server's delayed ACK, up to 40 ms on Linux, 200 ms on Windows.
        .no_delay(true)
        .build();
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(TcpConnector::default())
            .chain(TlsConnector {
                config: Arc::clone(tls),
            });
    ureq::Agent::with_parts(config, connector, DefaultResolver::default())
}

impl HttpClient {
    /// A builder
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }

    /// The client the providers use: the public roots, `config`'s extra root CA files and
    /// (unless `config` says otherwise) `SSL_CERT_FILE`
    ///
    /// # Errors
    /// [`TransportError`] when a CA file cannot be read or parsed.
    pub fn from_config(config: &HttpConfig) -> Result<Self, TransportError> {
        let mut builder = Self::builder();
        for path in config.extra_roots() {
            let pem = std::fs::read(path).map_err(|e| {
                TransportError::permanent(format!("cannot read CA file {}: {e}", path.display()))
                    .with_source(e)
            })?;
            builder = builder.add_root_certificates_pem(&pem).map_err(|e| {
                TransportError::permanent(format!("CA file {}", path.display())).with_source(e)
            })?;
        }
        if !config.reads_ssl_cert_file() {
            builder = builder.ignore_ssl_cert_file();
        }
        builder.build()
    }

    fn pinned_agent(&self, thumbprint: &str) -> Result<ureq::Agent, TransportError> {
        let verifier = Arc::new(PinnedThumbprint {
            sha1_hex: thumbprint.to_ascii_uppercase(),
            provider: provider(),
        });
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(agent(&Arc::new(tls), None, self.inner.connect_timeout))
    }

    /// Sends one identity request, blocking; any HTTP status is a response, only no answer
    /// is an error
    ///
    /// Rules: plain `http` only when `meta.allow_plain_http`; `meta.local_endpoint` bypasses
    /// every proxy; `meta.server_sha1_thumbprint` accepts only that server certificate; the
    /// whole exchange ends within `timeout` (or `meta.timeout` when shorter); redirects are
    /// returned, never followed; an answer over [`MAX_RESPONSE_BODY`] bytes is an error.
    ///
    /// # Errors
    /// [`TransportError`] when no usable answer arrived: a refused scheme (permanent), no
    /// connection, TLS failure, timeout, an answer too large or broken off.
    pub fn send(
        &self,
        request: IdentityRequest,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        // Taken by value so the body (a form with the client secret or assertion) moves into
        // the client instead of being copied.
        let (parts, body) = request.into_parts();
        let uri = &parts.uri;
        let host = uri.host().unwrap_or("?").to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if meta.allow_plain_http => false,
            _ => {
                return Err(TransportError::permanent(format!(
                    "refusing to send a token request to {}://{host}: identity endpoints off \
                     this machine must use https",
                    uri.scheme_str().unwrap_or("?"),
                )))
            }
        };
        let pinned;
        let agent = if let Some(thumbprint) = &meta.server_sha1_thumbprint {
            pinned = self.pinned_agent(thumbprint)?;
            &pinned
        } else if meta.local_endpoint {
            &self.inner.direct
        } else {
            self.inner
                .proxies
                .for_target(https, &host)
                .unwrap_or(&self.inner.direct)
        };
        let timeout = meta.timeout.map_or(timeout, |t| t.min(timeout));
        // The header map moves as is; ureq logs no value of it but a few harmless headers.
        let response = if body.is_empty() {
            let request = http::Request::from_parts(parts, ());
            let request = agent
                .configure_request(request)
                .timeout_global(Some(timeout))
                .build();
            agent.run(request)
        } else {
            let request = http::Request::from_parts(parts, body);
            let request = agent
                .configure_request(request)
                .timeout_global(Some(timeout))
                .build();
            agent.run(request)
        }
        .map_err(|e| transport(&host, timeout, e))?;
        let (head, body) = response.into_parts();
        // Sized up front when the length is known, so growing the buffer leaves no partial
        // copies of the token behind in freed memory. One byte past the cap tells a too-large
        // answer from one of exactly the cap; a truncated body would only fail later as
        // unparseable JSON, hiding the cause.
        let expected = body.content_length().unwrap_or(0).min(MAX_BODY);
        let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        body.into_with_config()
            .limit(MAX_BODY + 1)
            .reader()
            .take(MAX_BODY + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                if body_over_limit(&e) {
                    too_large(&host)
                } else {
                    TransportError::new(format!("the answer from {host} broke off")).with_source(e)
                }
            })?;
        if bytes.len() as u64 > MAX_BODY {
            return Err(too_large(&host));
        }
        let mut out = http::Response::new(bytes);
        *out.status_mut() = head.status;
        *out.headers_mut() = head.headers;
        Ok(out)
    }
}

fn too_large(host: &str) -> TransportError {
    TransportError::new(format!(
        "the answer from {host} is larger than the {MAX_BODY} bytes allowed"
    ))
}

/// ureq's body limit reached (it reports it as an I/O error wrapping its own)
fn body_over_limit(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(|e| matches!(e, ureq::Error::BodyExceedsLimit(_)))
}

fn transport(host: &str, timeout: Duration, e: ureq::Error) -> TransportError {
    // ureq's errors name no header nor body; URLs of these flows carry no secret either (they
    // travel in bodies and headers), and only the host is put in the message.
    match e {
        ureq::Error::Timeout(_) => TransportError::new(format!(
            "no answer from {host} within {}ms",
            timeout.as_millis()
        ))
        .with_source(e),
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::ConnectProxyFailed(_) => {
            TransportError::new(format!("token request to {host} failed: could not connect"))
                .with_source(e)
        }
        ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
            TransportError::new(format!(
                "no answer from {host} within {}ms",
                timeout.as_millis()
            ))
            .with_source(e)
        }
        ureq::Error::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) =>
        {
            TransportError::new(format!("token request to {host} failed: could not connect"))
                .with_source(e)
        }
        e => TransportError::new(format!("token request to {host} failed")).with_source(e),
    }
}

/// rustls over the chained TCP (or CONNECT-proxied) transport, with our `ClientConfig`: the
/// last connector of each agent's chain (ureq's own rustls connector takes no custom verifier)
#[derive(Debug)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Err(ureq::Error::ConnectionFailed);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details.uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            ureq::Error::Tls("the identity endpoint's host is not a valid TLS name")
        })?;
        let mut conn = rustls::ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        Ok(Some(Either::B(TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: rustls::StreamOwned { conn, sock },
        })))
    }
}

/// A TLS connection as a ureq transport
struct TlsTransport {
    buffers: LazyBuffers,
    stream: rustls::StreamOwned<rustls::ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        use std::io::Write;
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// Accepts exactly one server certificate, by SHA-1 thumbprint (Service Fabric)
#[derive(Debug)]
struct PinnedThumbprint {
    sha1_hex: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedThumbprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // SHA-1 is what Service Fabric pins by; ring's legacy-only digest, no extra crate.
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, end_entity.as_ref());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        if hex == self.sha1_hex {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the identity endpoint's certificate does not match the pinned thumbprint"
                    .to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
