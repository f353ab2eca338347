//! HTTP for identity requests, through ureq, with the rules every runtime keeps
//!
//! - Local identity endpoints (IMDS, App Service, Arc, ...) never go through a proxy; remote
//!   ones (Entra) honour `HTTPS_PROXY` / `NO_PROXY`.
//! - Plain `http` only where the flow allows it (local endpoints, a loopback emulator).
//! - A custom root CA can be added, and `SSL_CERT_FILE` is honoured, on top of the public roots.
//! - Every request has a timeout; redirects are never followed.
//! - Service Fabric's self-signed endpoint is accepted only with the pinned SHA-1 thumbprint.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redis_entraid_core::error::TransportError;
use redis_entraid_core::identity::RequestMeta;
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
    direct: ureq::Agent,
    proxied: ureq::Agent,
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
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(tls_error)?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let agent = |proxy: bool| {
            ureq::AgentBuilder::new()
                .tls_config(Arc::clone(&tls))
                .redirects(0)
                .try_proxy_from_env(proxy)
                .timeout(Duration::from_secs(30))
                .user_agent(concat!("redis-entraid/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Ok(Self {
            direct: agent(false),
            proxied: agent(true),
        })
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
        Ok(ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .redirects(0)
            .try_proxy_from_env(false)
            .build())
    }

    /// Sends one identity request; any HTTP status is a response, only no answer is an error
    pub(crate) fn send(
        &self,
        request: &http::Request<Vec<u8>>,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let uri = request.uri();
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
        let agent = if let Some(thumbprint) = &meta.server_sha1_thumbprint {
            pinned = self.pinned_agent(thumbprint)?;
            &pinned
        } else if meta.local_endpoint {
            &self.direct
        } else {
            &self.proxied
        };
        let timeout = meta.timeout.map_or(timeout, |t| t.min(timeout));
        let mut call = agent
            .request(request.method().as_str(), &uri.to_string())
            .timeout(timeout);
        for (name, value) in request.headers() {
            let value = value
                .to_str()
                .map_err(|_| TransportError::permanent(format!("header {name} is not text")))?;
            call = call.set(name.as_str(), value);
        }
        let answer = if request.body().is_empty() && request.method() == http::Method::GET {
            call.call()
        } else {
            call.send_bytes(request.body())
        };
        let response = match answer {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(e)) => {
                let text = e.to_string();
                let host = uri.host().unwrap_or("?");
                return Err(if text.contains("timed out") || text.contains("Timeout") {
                    TransportError::new(format!(
                        "no answer from {host} within {}ms",
                        timeout.as_millis()
                    ))
                } else {
                    TransportError::new(format!("token request to {host} failed: {}", e.kind()))
                }
                .with_source(e));
            }
        };
        let mut builder = http::Response::builder().status(response.status());
        for name in response.headers_names() {
            for value in response.all(&name) {
                builder = builder.header(name.as_str(), value);
            }
        }
        // One byte past the cap tells a too-large answer from one of exactly the cap; a
        // truncated body would only fail later as unparseable JSON, hiding the cause.
        let mut body = Vec::new();
        response
            .into_reader()
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
