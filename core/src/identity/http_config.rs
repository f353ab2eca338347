//! TLS settings for identity requests, the same in every runtime
//!
//! Plain settings: the runtimes read the files when they build their HTTP clients.

use std::path::PathBuf;

/// TLS settings for identity requests: extra root CAs on top of the public roots, and whether
/// `SSL_CERT_FILE` is honoured (it is by default, as the Azure SDKs do)
///
/// ```
/// use redis_entraid_core::identity::HttpConfig;
///
/// let http = HttpConfig::default().add_root_ca("/etc/ssl/emulator-ca.pem").ignore_ssl_cert_file();
/// assert_eq!(http.extra_roots().len(), 1);
/// assert!(!http.reads_ssl_cert_file());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpConfig {
    extra_roots: Vec<PathBuf>,
    ignore_ssl_cert_file: bool,
}

impl HttpConfig {
    /// Trusts the CA certificates in this PEM file too (e.g. the emulator's CA)
    #[must_use]
    pub fn add_root_ca(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.extra_roots.push(pem_file.into());
        self
    }

    /// Does not read `SSL_CERT_FILE` from the environment
    #[must_use]
    pub fn ignore_ssl_cert_file(mut self) -> Self {
        self.ignore_ssl_cert_file = true;
        self
    }

    /// The extra root CA files, in the order they were added
    pub fn extra_roots(&self) -> &[PathBuf] {
        &self.extra_roots
    }

    /// Whether `SSL_CERT_FILE` is read when the client is built
    pub fn reads_ssl_cert_file(&self) -> bool {
        !self.ignore_ssl_cert_file
    }
}
