//! HTTP for identity requests, through reqwest's blocking client, with the rules every runtime
//! keeps
//!
//! - Local identity endpoints (IMDS, App Service, Arc, ...) never go through a proxy; remote
//!   ones (Entra) use `HTTPS_PROXY` for https and `HTTP_PROXY` for http, and honour `NO_PROXY`
//!   (reqwest's system proxy rules, read when the client is built).
//! - Plain `http` only where the flow allows it (local endpoints, a loopback emulator).
//! - A custom root CA can be added, and `SSL_CERT_FILE` is honoured, on top of the public roots.
//! - Every request has a timeout; redirects are never followed.
//! - Service Fabric's self-signed endpoint is accepted only with the pinned SHA-1 thumbprint.
//!
//! reqwest rather than ureq 2: ureq 2 writes the whole request prelude (every header but
//! `Authorization` and `Cookie`) to the `log` crate at DEBUG, so App Service's
//! `X-IDENTITY-HEADER` and the Service Fabric / MSI `secret` ended up in applications' logs;
//! ureq 3 hex-dumps every byte sent (headers and form bodies) at TRACE. reqwest (hyper) logs
//! no header values nor bodies unless `connection_verbose` is switched on, which is never
//! done here. It also keeps the proxy rules (NO_PROXY, HTTPS_PROXY only for https) that
//! ureq 2 did not.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redis_entraid_core::error::TransportError;
use redis_entraid_core::identity::{IdentityRequest, RequestMeta};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha1::{Digest, Sha1};

/// Largest identity response read; real ones are a few kilobytes
const MAX_BODY: u64 = 1024 * 1024;

/// TLS and proxy settings for identity requests
#[derive(Clone, Debug, Default)]
pub struct HttpConfig {
    extra_roots: Vec<PathBuf>,
    ignore_ssl_cert_file: bool,
}

impl HttpConfig {
    /// Trusts the CA certificates in this PEM file too (e.g. the emulator's CA)
    pub fn add_root_ca(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.extra_roots.push(pem_file.into());
        self
    }

    /// Does not read `SSL_CERT_FILE` from the environment
    pub fn ignore_ssl_cert_file(mut self) -> Self {
        self.ignore_ssl_cert_file = true;
        self
    }
}

/// The HTTP client of the blocking runtime
#[derive(Clone)]
pub(crate) struct Http {
    direct: reqwest::blocking::Client,
    proxied: reqwest::blocking::Client,
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

/// A blocking client with our TLS settings; `proxy` false bypasses every proxy
fn client(
    tls: rustls::ClientConfig,
    proxy: bool,
) -> Result<reqwest::blocking::Client, TransportError> {
    let mut builder = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("redis-entraid/", env!("CARGO_PKG_VERSION")));
    if !proxy {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| TransportError::permanent("cannot build the HTTP client").with_source(e))
}

impl Http {
    pub(crate) fn new(config: &HttpConfig) -> Result<Self, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in &config.extra_roots {
            load_pem(path, &mut roots)?;
        }
        if !config.ignore_ssl_cert_file {
            if let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
                load_pem(Path::new(&path), &mut roots)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            direct: client(tls.clone(), false)?,
            proxied: client(tls, true)?,
        })
    }

    fn pinned_client(thumbprint: &str) -> Result<reqwest::blocking::Client, TransportError> {
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
        client(tls, false)
    }

    /// Sends one identity request; any HTTP status is a response, only no answer is an error
    pub(crate) fn send(
        &self,
        request: IdentityRequest,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        // Taken by value so the body (a form with the client secret or assertion) moves into
        // the client instead of being copied.
        let (parts, body) = request.into_parts();
        let uri = &parts.uri;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if meta.allow_plain_http => {}
            _ => {
                return Err(TransportError::permanent(format!(
                    "refusing to send a token request to {}://{}: identity endpoints off this machine must use https",
                    uri.scheme_str().unwrap_or("?"),
                    uri.host().unwrap_or("?")
                )))
            }
        }
        let pinned;
        let client = if let Some(thumbprint) = &meta.server_sha1_thumbprint {
            pinned = Self::pinned_client(thumbprint)?;
            &pinned
        } else if meta.local_endpoint {
            &self.direct
        } else {
            &self.proxied
        };
        let timeout = meta.timeout.map_or(timeout, |t| t.min(timeout));
        // The header map moves as is, so the core's `sensitive` flags travel with it.
        let mut call = client
            .request(parts.method, uri.to_string())
            .headers(parts.headers)
            .timeout(timeout);
        if !body.is_empty() {
            call = call.body(body);
        }
        let host = uri.host().unwrap_or("?");
        let response = call.send().map_err(|e| transport(host, timeout, e))?;
        let mut builder = http::Response::builder().status(response.status());
        if let Some(headers) = builder.headers_mut() {
            *headers = response.headers().clone();
        }
        // Sized up front when the length is known, so growing the buffer leaves no partial
        // copies of the token behind in freed memory. One byte past the cap tells a too-large
        // answer from one of exactly the cap; a truncated body would only fail later as
        // unparseable JSON, hiding the cause.
        let expected = response.content_length().unwrap_or(0).min(MAX_BODY);
        let mut body = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        response
            .take(MAX_BODY + 1)
            .read_to_end(&mut body)
            .map_err(|e| {
                TransportError::new("the identity endpoint's answer broke off").with_source(e)
            })?;
        if body.len() as u64 > MAX_BODY {
            return Err(TransportError::new(format!(
                "the identity endpoint's answer is larger than the {MAX_BODY} bytes allowed"
            )));
        }
        builder.body(body).map_err(|e| {
            TransportError::new("the identity endpoint sent an unusable header").with_source(e)
        })
    }
}

fn transport(host: &str, timeout: Duration, e: reqwest::Error) -> TransportError {
    // reqwest's error text holds the URL, which never carries secrets for these flows (they
    // travel in bodies and headers); it is dropped anyway so errors stay short.
    let e = e.without_url();
    if e.is_timeout() {
        TransportError::new(format!(
            "no answer from {host} within {}ms",
            timeout.as_millis()
        ))
        .with_source(e)
    } else if e.is_connect() {
        TransportError::new(format!("token request to {host} failed: could not connect"))
            .with_source(e)
    } else {
        TransportError::new(format!("token request to {host} failed")).with_source(e)
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
        let digest = Sha1::digest(end_entity.as_ref());
        let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
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
