//! Service principal with a client certificate: a signed client assertion
//!
//! The token request is the client-credentials `POST` of [`client_secret`](super::client_secret)
//! with `client_assertion=<JWT>` and
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` instead of a
//! secret. The JWT (azure-protocols §6):
//!
//! - header `{"alg":"PS256","typ":"JWT","x5t#S256":<base64url SHA-256 of the leaf DER>}` by
//!   default (RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32), or with
//!   [`AssertionAlgorithm::Rs256`] `{"alg":"RS256","typ":"JWT","x5t":<base64url SHA-1>}`
//!   (RSASSA-PKCS1-v1_5); plus `"x5c": [<standard base64 DER>, ..]`, leaf first, when the chain is
//!   to be sent (subject name / issuer authentication, `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`);
//! - claims `aud` (the token URL), `iss` = `sub` = client id, `jti` (random UUID), `iat` = `nbf` =
//!   now, `exp` = now + 10 min, all times JSON integers;
//! - header, payload and signature in unpadded base64url.
//!
//! The core reads no clock: `wall` is an argument. The `jti` comes from a 32-byte seed the
//! runtime filled from the OS for this fetch ([`ClientCertificate::build_request_with_seed`]).
//! The one exception to "no OS randomness in the core" is the PS256 salt: signing uses `ring`
//! (the crypto provider rustls already brings, so this flow adds no crate of its own), and
//! `ring` draws the salt from its own `SystemRandom`, accepting no other source.
//!
//! Inputs: PEM (private key as `PRIVATE KEY` or `RSA PRIVATE KEY`, plus one or more
//! `CERTIFICATE` blocks, in any order) or, with the `pkcs12` feature, PKCS#12 with a password
//! (possibly empty). The leaf is the certificate whose public key matches the private key,
//! found by a bounded DER walk to its `subjectPublicKeyInfo` (no X.509 parser: the thumbprints
//! are digests of the whole DER). Only RSA keys of 2048 to 8192 bits are supported (as in every
//! Azure SDK, and what `ring` signs with).
//!
//! Secrecy: the private key is held only as its DER inside a [`SecretBytes`] (zeroized on drop,
//! redacted in `Debug`). `ring` does not zeroize its parsed key pair, so one is parsed for each
//! signature and dropped right after it, rather than kept for the credential's lifetime.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::digest;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use serde_json::json;
use zeroize::Zeroizing;

use crate::error::{ConfigError, ResponseError};
use crate::identity::entra::{self, EntraClient, JWT_BEARER};
use crate::identity::env::{self, EnvSource};
use crate::secret::{SecretBytes, SecretString};
use crate::token::TokenResponse;

/// Lifetime of a client assertion (MSAL's 10 minutes)
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// Largest certificate file accepted
pub const MAX_CERTIFICATE_FILE_LEN: u64 = 1024 * 1024;

/// How the client assertion is signed
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256 and an `x5t#S256` thumbprint (Entra's current recommendation)
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an `x5t` (SHA-1) thumbprint (legacy, ADFS)
    Rs256,
}

/// How the private key's DER is wrapped
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyEncoding {
    /// `PRIVATE KEY`: PKCS#8 `PrivateKeyInfo` (v1)
    Pkcs8,
    /// `RSA PRIVATE KEY`: PKCS#1 `RSAPrivateKey`
    Pkcs1,
}

/// An RSA private key (as zeroizing DER) with its certificate and chain
#[derive(Clone)]
pub struct CertificateCredential {
    key: Arc<SecretBytes>,
    encoding: KeyEncoding,
    /// The key's public half, a DER `RSAPublicKey` (not secret)
    public_key: Vec<u8>,
    /// DER of each certificate, leaf first
    chain: Vec<Vec<u8>>,
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("key", &format_args!("{}", crate::secret::REDACTED))
            .field("x5t#S256", &self.thumbprint_sha256())
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

impl PartialEq for CertificateCredential {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain
    }
}

impl Eq for CertificateCredential {}

fn cert_error(problem: impl Into<String>) -> ConfigError {
    ConfigError::new("client_certificate", problem)
}

/// Why `ring` refused a key, in words a user can act on
fn key_error(what: &str, rejected: &ring::error::KeyRejected) -> ConfigError {
    let why = match rejected.to_string().as_str() {
        "TooSmall" => "the key is smaller than 2048 bits",
        "TooLarge" => "the key is larger than 8192 bits",
        "VersionNotSupported" => "only version 1 PKCS#8 keys are supported",
        "WrongAlgorithm" => "it is not an RSA key (only RSA is supported)",
        "InvalidEncoding" => "it is not a valid DER RSA private key",
        _ => "it is not a usable RSA private key",
    };
    cert_error(format!("the {what} was rejected: {why} (ring: {rejected})"))
}

impl KeyEncoding {
    fn parse(self, der: &[u8]) -> Result<RsaKeyPair, ConfigError> {
        match self {
            Self::Pkcs8 => RsaKeyPair::from_pkcs8(der).map_err(|e| key_error("PRIVATE KEY", &e)),
            Self::Pkcs1 => RsaKeyPair::from_der(der).map_err(|e| key_error("RSA PRIVATE KEY", &e)),
        }
    }
}

/// One PEM block: its label and its decoded contents (zeroized on drop: it may be a key)
struct PemBlock<'a> {
    label: &'a str,
    der: Zeroizing<Vec<u8>>,
}

/// Splits PEM text into its blocks, in order; text between blocks is ignored
fn pem_blocks(text: &str) -> Result<Vec<PemBlock<'_>>, ConfigError> {
    const BEGIN: &str = "-----BEGIN ";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = rest.get(start + BEGIN.len()..).unwrap_or("");
        let label_end = after
            .find("-----")
            .ok_or_else(|| cert_error("a PEM block has no closing dashes on its BEGIN line"))?;
        let label = after.get(..label_end).unwrap_or("");
        if label.contains('\n') {
            return Err(cert_error("a PEM BEGIN line is broken across lines"));
        }
        let body_and_rest = after.get(label_end + 5..).unwrap_or("");
        let end_marker = format!("-----END {label}-----");
        let body_end = body_and_rest
            .find(&end_marker)
            .ok_or_else(|| cert_error(format!("the PEM block {label} has no END line")))?;
        let body = body_and_rest.get(..body_end).unwrap_or("");
        // RFC 1421 headers ("Proc-Type: 4,ENCRYPTED", "DEK-Info: ...") mark an OpenSSL
        // encrypted traditional key; any other header line is not part of the base64.
        if body
            .lines()
            .any(|l| l.contains("ENCRYPTED") && l.contains(':'))
        {
            return Err(encrypted_key_error());
        }
        let mut base64_text = Zeroizing::new(String::with_capacity(body.len()));
        for line in body.lines().filter(|l| !l.contains(':')) {
            base64_text.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
        }
        let der = STANDARD
            .decode(base64_text.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| cert_error(format!("the PEM block {label} is not valid base64")))?;
        blocks.push(PemBlock { label, der });
        rest = body_and_rest
            .get(body_end + end_marker.len()..)
            .unwrap_or("");
    }
    Ok(blocks)
}

fn encrypted_key_error() -> ConfigError {
    cert_error(
        "encrypted PEM keys are not supported: decrypt the key (openssl pkey) \
         or use a PKCS#12 file with a password (feature `pkcs12`)",
    )
}

/// A DER element: its tag, its contents and what follows it; `None` when malformed
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits give how many length bytes follow; four are plenty for a
        // certificate file capped at 1 MiB.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = rest.get(..count)?;
        let len = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (len, rest.get(count..)?)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

const SEQUENCE: u8 = 0x30;

/// The `RSAPublicKey` DER inside a certificate's `subjectPublicKeyInfo`
///
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, .. }, .. }` (RFC 5280 §4.1).
fn certificate_public_key(cert: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = der_element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_element(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = der_element(tbs)?;
    // Without the explicit version the first element was the serial number itself.
    let skip = if tag == 0xa0 { 5 } else { 4 };
    for _ in 0..skip {
        rest = der_element(rest)?.2;
    }
    let (SEQUENCE, spki, _) = der_element(rest)? else {
        return None;
    };
    let (SEQUENCE, _algorithm, rest) = der_element(spki)? else {
        return None;
    };
    let (0x03, bits, _) = der_element(rest)? else {
        return None;
    };
    // A BIT STRING's first byte counts the unused bits: zero for a DER key.
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

/// `(n, e)` of a DER `RSAPublicKey`, without leading zero bytes, so two encodings of the same
/// key compare equal
fn rsa_public_numbers(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (SEQUENCE, key, _) = der_element(der)? else {
        return None;
    };
    let (0x02, n, rest) = der_element(key)? else {
        return None;
    };
    let (0x02, e, _) = der_element(rest)? else {
        return None;
    };
    let strip = |x: &[u8]| -> usize { x.iter().take_while(|&&b| b == 0).count() };
    Some((n.get(strip(n)..)?, e.get(strip(e)..)?))
}

impl CertificateCredential {
    /// From a PEM file or a PKCS#12 archive, told apart as the Azure SDKs do (`-----BEGIN`)
    ///
    /// # Errors
    /// As [`CertificateCredential::from_pem`] and `CertificateCredential::from_pkcs12`; without
    /// the `pkcs12` feature, a [`ConfigError`] when the data is not PEM.
    pub fn from_bytes(
        data: &SecretBytes,
        password: Option<&SecretString>,
    ) -> Result<Self, ConfigError> {
        let bytes = data.expose_secret();
        if bytes.windows(10).any(|w| w == b"-----BEGIN") {
            return Self::from_pem(data);
        }
        #[cfg(feature = "pkcs12")]
        {
            let empty = SecretString::default();
            Self::from_pkcs12(data, password.unwrap_or(&empty))
        }
        #[cfg(not(feature = "pkcs12"))]
        {
            let _ = password;
            Err(cert_error(
                "the certificate file is not PEM (no -----BEGIN line); a PKCS#12 (.pfx/.p12) \
                 file needs the `pkcs12` feature of redis-entraid (or convert it to PEM: \
                 openssl pkcs12 -nodes)",
            ))
        }
    }

    /// From PEM text holding an RSA private key and its certificate(s)
    ///
    /// # Errors
    /// A [`ConfigError`] on `client_certificate` when there is no key, no certificate matching
    /// the key, the key is encrypted, not RSA or outside 2048 to 8192 bits, or a block is not
    /// valid PEM.
    pub fn from_pem(pem: &SecretBytes) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(pem.expose_secret())
            .map_err(|_| cert_error("the PEM file is not text"))?;
        let mut key = None;
        let mut certs = Vec::new();
        for block in pem_blocks(text)? {
            match block.label {
                "CERTIFICATE" => certs.push(block.der.to_vec()),
                "PRIVATE KEY" => key = Some((KeyEncoding::Pkcs8, block.der)),
                "RSA PRIVATE KEY" => key = Some((KeyEncoding::Pkcs1, block.der)),
                "ENCRYPTED PRIVATE KEY" => return Err(encrypted_key_error()),
                _ => {}
            }
        }
        let (encoding, der) = key.ok_or_else(|| {
            cert_error("the PEM file has no PRIVATE KEY or RSA PRIVATE KEY block")
        })?;
        Self::assemble(encoding, SecretBytes::new(der.to_vec()), certs)
    }

    /// From a PKCS#12 (PFX) archive and its password (empty when it has none)
    ///
    /// # Errors
    /// A [`ConfigError`] on `client_certificate` when the archive cannot be opened with the
    /// password, holds no private key, the key is not RSA, or no certificate matches it.
    #[cfg(feature = "pkcs12")]
    pub fn from_pkcs12(data: &SecretBytes, password: &SecretString) -> Result<Self, ConfigError> {
        let store = p12_keystore::KeyStore::from_pkcs12(
            data.expose_secret(),
            password.expose_secret(),
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .map_err(|_| {
            cert_error(
                "the PKCS#12 file could not be opened: wrong password \
                 (AZURE_CLIENT_CERTIFICATE_PASSWORD) or not a PKCS#12 file",
            )
        })?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| cert_error("the PKCS#12 file holds no private key"))?;
        let key = SecretBytes::new(chain.key().as_der().to_vec());
        let mut certs: Vec<Vec<u8>> = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
        for (_, entry) in store.entries() {
            if let p12_keystore::KeyStoreEntry::Certificate(cert) = entry {
                if !certs.iter().any(|c| c.as_slice() == cert.as_der()) {
                    certs.push(cert.as_der().to_vec());
                }
            }
        }
        Self::assemble(KeyEncoding::Pkcs8, key, certs)
    }

    /// Checks the key and puts the certificate matching it first
    fn assemble(
        encoding: KeyEncoding,
        key: SecretBytes,
        mut certs: Vec<Vec<u8>>,
    ) -> Result<Self, ConfigError> {
        let public_key = encoding
            .parse(key.expose_secret())?
            .public()
            .as_ref()
            .to_vec();
        if certs.is_empty() {
            return Err(cert_error("no CERTIFICATE found next to the private key"));
        }
        let ours = rsa_public_numbers(&public_key);
        let leaf = certs
            .iter()
            .position(|der| {
                ours.is_some() && certificate_public_key(der).and_then(rsa_public_numbers) == ours
            })
            .ok_or_else(|| cert_error("none of the certificates belongs to the private key"))?;
        let leaf_der = certs.remove(leaf);
        certs.insert(0, leaf_der);
        Ok(Self {
            key: Arc::new(key),
            encoding,
            public_key,
            chain: certs,
        })
    }

    fn thumbprint(&self, algorithm: &'static digest::Algorithm) -> String {
        let leaf = self.chain.first().map(Vec::as_slice).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(digest::digest(algorithm, leaf))
    }

    /// base64url (unpadded) SHA-1 of the leaf DER: the `x5t` header
    pub fn thumbprint_sha1(&self) -> String {
        // SHA-1 names the certificate here (as Entra's legacy header defines it); nothing's
        // security rests on its collision resistance.
        self.thumbprint(&digest::SHA1_FOR_LEGACY_USE_ONLY)
    }

    /// base64url (unpadded) SHA-256 of the leaf DER: the `x5t#S256` header
    pub fn thumbprint_sha256(&self) -> String {
        self.thumbprint(&digest::SHA256)
    }

    /// The certificates' DER, leaf first
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The public key as a DER `RSAPublicKey` (PKCS#1), e.g. to verify an assertion
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key
    }

    /// Signs `message`; the parsed key pair lives only for this call (see the module docs)
    fn sign(&self, algorithm: AssertionAlgorithm, message: &[u8]) -> Result<Vec<u8>, ConfigError> {
        let pair = self.encoding.parse(self.key.expose_secret())?;
        let padding: &'static dyn ring::signature::RsaEncoding = match algorithm {
            AssertionAlgorithm::Ps256 => &RSA_PSS_SHA256,
            AssertionAlgorithm::Rs256 => &RSA_PKCS1_SHA256,
        };
        let mut signature = vec![0; pair.public().modulus_len()];
        pair.sign(
            padding,
            &ring::rand::SystemRandom::new(),
            message,
            &mut signature,
        )
        .map_err(|_| cert_error("signing the client assertion failed"))?;
        Ok(signature)
    }
}

/// A service principal authenticating with a certificate
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    client: EntraClient,
    certificate: CertificateCredential,
    algorithm: AssertionAlgorithm,
    send_chain: bool,
}

impl ClientCertificate {
    /// PS256, no `x5c`
    pub fn new(client: EntraClient, certificate: CertificateCredential) -> Self {
        Self {
            client,
            certificate,
            algorithm: AssertionAlgorithm::default(),
            send_chain: false,
        }
    }

    /// Chooses PS256 (default) or RS256
    #[must_use]
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sends the `x5c` chain (subject name / issuer authentication)
    #[must_use]
    pub fn with_certificate_chain(mut self, send: bool) -> Self {
        self.send_chain = send;
        self
    }

    /// The client
    pub fn client(&self) -> &EntraClient {
        &self.client
    }

    /// The signed client assertion for a request sent at `wall`; its `jti` is made of the
    /// first 16 bytes of `seed` (fill it from the OS for every request)
    ///
    /// # Errors
    /// A [`ConfigError`] on `client_certificate` when the key cannot be used to sign (it was
    /// checked when loaded, so only a failure of the system's random source gets here).
    pub fn build_assertion(
        &self,
        wall: SystemTime,
        seed: [u8; 32],
    ) -> Result<SecretString, ConfigError> {
        let now = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let exp = now.saturating_add(ASSERTION_LIFETIME.as_secs());
        let mut jti = [0u8; 16];
        for (j, s) in jti.iter_mut().zip(seed) {
            *j = s;
        }
        let mut header = match self.algorithm {
            AssertionAlgorithm::Ps256 => json!({
                "alg": "PS256", "typ": "JWT", "x5t#S256": self.certificate.thumbprint_sha256()
            }),
            AssertionAlgorithm::Rs256 => json!({
                "alg": "RS256", "typ": "JWT", "x5t": self.certificate.thumbprint_sha1()
            }),
        };
        if self.send_chain {
            let x5c: Vec<String> = self
                .certificate
                .chain
                .iter()
                .map(|d| STANDARD.encode(d))
                .collect();
            if let Some(map) = header.as_object_mut() {
                map.insert("x5c".to_owned(), json!(x5c));
            }
        }
        let claims = json!({
            "aud": self.client.token_url(),
            "iss": self.client.client_id(),
            "sub": self.client.client_id(),
            "jti": uuid_v4(jti),
            "iat": now,
            "nbf": now,
            "exp": exp,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .certificate
            .sign(self.algorithm, signing_input.as_bytes())?;
        Ok(SecretString::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }

    /// The token request for a fetch sent at `wall`, with an assertion whose `jti` comes from
    /// `seed`, which the runtime fills from the operating system's random source for every fetch
    ///
    /// # Errors
    /// As [`ClientCertificate::build_assertion`], or a [`ConfigError`] for an invalid URL.
    pub fn build_request_with_seed(
        &self,
        wall: SystemTime,
        seed: [u8; 32],
    ) -> Result<crate::identity::IdentityRequest, ConfigError> {
        let assertion = self.build_assertion(wall, seed)?;
        self.client.form_request(&[
            ("client_assertion", assertion.expose_secret()),
            ("client_assertion_type", JWT_BEARER),
        ])
    }

    /// Reads the answer
    ///
    /// # Errors
    /// As [`entra::parse_response`].
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        entra::parse_response(response)
    }
}

fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8).unwrap_or(""),
        hex.get(8..12).unwrap_or(""),
        hex.get(12..16).unwrap_or(""),
        hex.get(16..20).unwrap_or(""),
        hex.get(20..32).unwrap_or("")
    )
}

/// A certificate credential configured by path: the runtime reads the file (at every fetch, so a
/// renewed certificate is picked up) and the core parses and signs
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificateFile {
    client: EntraClient,
    path: PathBuf,
    password: Option<SecretString>,
    algorithm: AssertionAlgorithm,
    send_chain: bool,
}

impl ClientCertificateFile {
    /// A client and the path of its PEM or PKCS#12 file
    pub fn new(client: EntraClient, path: impl Into<PathBuf>) -> Self {
        Self {
            client,
            path: path.into(),
            password: None,
            algorithm: AssertionAlgorithm::default(),
            send_chain: false,
        }
    }

    /// From `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH`,
    /// `AZURE_CLIENT_CERTIFICATE_PASSWORD`, `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` (`1` or
    /// `true`) and `AZURE_AUTHORITY_HOST`
    ///
    /// # Errors
    /// A [`ConfigError`] naming the missing or invalid variable.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let path = env::var(env, env::AZURE_CLIENT_CERTIFICATE_PATH)
            .ok_or_else(|| ConfigError::new(env::AZURE_CLIENT_CERTIFICATE_PATH, "not set"))?;
        let mut file = Self::new(EntraClient::from_env(env)?, path)
            .with_certificate_chain(env::flag(env, env::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN));
        if let Some(password) = env.get(env::AZURE_CLIENT_CERTIFICATE_PASSWORD) {
            file = file.with_password(SecretString::new(password));
        }
        Ok(file)
    }

    /// The PKCS#12 password
    #[must_use]
    pub fn with_password(mut self, password: SecretString) -> Self {
        self.password = Some(password);
        self
    }

    /// Chooses PS256 (default) or RS256
    #[must_use]
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sends the `x5c` chain
    #[must_use]
    pub fn with_certificate_chain(mut self, send: bool) -> Self {
        self.send_chain = send;
        self
    }

    /// The file the runtime reads
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether the chain is sent
    pub fn sends_chain(&self) -> bool {
        self.send_chain
    }

    /// The credential, from the file's contents
    ///
    /// # Errors
    /// As [`CertificateCredential::from_bytes`].
    pub fn load(&self, contents: &SecretBytes) -> Result<ClientCertificate, ConfigError> {
        let certificate = CertificateCredential::from_bytes(contents, self.password.as_ref())?;
        Ok(ClientCertificate::new(self.client.clone(), certificate)
            .with_algorithm(self.algorithm)
            .with_certificate_chain(self.send_chain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    // The signatures are checked with the `rsa` crate (a dev-dependency, the generation the
    // emulator verifies with), not with ring, so a test is not the signer grading itself.
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::signature::Verifier;
    use sha2::Digest;

    const PKCS8_PEM: &[u8] = include_bytes!("../../test-fixtures/client-pkcs8.pem");
    const PKCS1_PEM: &[u8] = include_bytes!("../../test-fixtures/client-pkcs1.pem");
    const P12: &[u8] = include_bytes!("../../test-fixtures/client.p12");
    const P12_NO_PASSWORD: &[u8] = include_bytes!("../../test-fixtures/client-nopass.p12");
    const LEAF_PEM: &[u8] = include_bytes!("../../test-fixtures/leaf.crt");
    const CA_PEM: &[u8] = include_bytes!("../../test-fixtures/ca.crt");
    const RSA1024_PEM: &[u8] = include_bytes!("../../test-fixtures/rsa1024.pem");
    const EC_PEM: &[u8] = include_bytes!("../../test-fixtures/ec.pem");
    #[cfg(feature = "pkcs12")]
    const P12_PASSWORD: &str = "fixture-p12-password";
    const WALL: u64 = 1_767_139_200;

    /// The DER of a one-block PEM file, decoded independently of `pem_blocks`
    fn der_of(pem: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(pem);
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).unwrap_or_default()
    }

    fn client() -> EntraClient {
        match EntraClient::new(
            "72f988bf-0000-0000-0000-000000000000",
            "11111111-2222-3333-4444-555555555555",
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn load(data: &[u8], password: Option<&str>) -> Result<CertificateCredential, ConfigError> {
        let password = password.map(SecretString::new);
        CertificateCredential::from_bytes(&SecretBytes::new(data.to_vec()), password.as_ref())
    }

    fn credential(data: &[u8], password: Option<&str>) -> CertificateCredential {
        load(data, password).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problem(result: Result<CertificateCredential, ConfigError>) -> String {
        match result {
            Ok(c) => panic!("loaded {c:?}"),
            Err(e) => e.problem,
        }
    }

    fn b64json(part: &str) -> serde_json::Value {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Decodes the JWT, checks its signature with the certificate's public key, returns the
    /// header and claims
    fn verify(jwt: &str, cert: &CertificateCredential) -> (serde_json::Value, serde_json::Value) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let (h, c, s) = (parts[0], parts[1], parts[2]);
        assert!(!jwt.contains('='), "unpadded base64url");
        let header = b64json(h);
        let signature = URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
        let message = format!("{h}.{c}");
        let public = rsa::RsaPublicKey::from_pkcs1_der(cert.public_key_der())
            .unwrap_or_else(|e| panic!("public key: {e}"));
        let ok = match header["alg"].as_str() {
            Some("PS256") => {
                let sig = rsa::pss::Signature::try_from(signature.as_slice());
                // salt length 32 is what VerifyingKey::new checks
                sig.is_ok_and(|sig| {
                    rsa::pss::VerifyingKey::<sha2::Sha256>::new(public)
                        .verify(message.as_bytes(), &sig)
                        .is_ok()
                })
            }
            Some("RS256") => {
                let sig = rsa::pkcs1v15::Signature::try_from(signature.as_slice());
                sig.is_ok_and(|sig| {
                    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public)
                        .verify(message.as_bytes(), &sig)
                        .is_ok()
                })
            }
            other => panic!("unexpected alg {other:?}"),
        };
        assert!(ok, "signature does not verify");
        (header, b64json(c))
    }

    fn assertion(cert: &ClientCertificate, seed: u8) -> String {
        match cert.build_assertion(UNIX_EPOCH + Duration::from_secs(WALL), [seed; 32]) {
            Ok(a) => a.expose_secret().to_owned(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_pem_form_loads_the_same_leaf_first_with_digest_thumbprints() {
        let leaf = der_of(LEAF_PEM);
        let ca = der_of(CA_PEM);
        for cert in [credential(PKCS8_PEM, None), credential(PKCS1_PEM, None)] {
            assert_eq!(cert.chain_der(), &[leaf.clone(), ca.clone()]);
        }
        let cert = credential(PKCS8_PEM, None);
        assert_eq!(
            cert.thumbprint_sha256(),
            URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&leaf))
        );
        assert_eq!(
            cert.thumbprint_sha1(),
            URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&leaf))
        );
        assert_eq!(
            cert.public_key_der(),
            credential(PKCS1_PEM, None).public_key_der()
        );
    }

    #[cfg(feature = "pkcs12")]
    #[test]
    fn pkcs12_with_and_without_password_loads_the_pem_chain() {
        let leaf = der_of(LEAF_PEM);
        let ca = der_of(CA_PEM);
        assert_eq!(
            credential(P12, Some(P12_PASSWORD)).chain_der(),
            &[leaf.clone(), ca]
        );
        assert_eq!(
            credential(P12_NO_PASSWORD, None).chain_der(),
            std::slice::from_ref(&leaf)
        );
        let wrong = CertificateCredential::from_pkcs12(
            &SecretBytes::new(P12.to_vec()),
            &SecretString::new("wrong"),
        );
        assert!(problem(wrong).contains("wrong password"));
    }

    #[cfg(not(feature = "pkcs12"))]
    #[test]
    fn pkcs12_without_its_feature_is_an_error_naming_the_feature() {
        for file in [P12, P12_NO_PASSWORD] {
            let why = problem(load(file, Some("fixture-p12-password")));
            assert!(
                why.contains("not PEM") && why.contains("`pkcs12` feature"),
                "{why}"
            );
        }
    }

    #[test]
    fn ps256_assertion_from_pem_verifies_and_has_exact_claims() {
        let cert = credential(PKCS8_PEM, None);
        let source = ClientCertificate::new(client(), cert.clone());
        let jwt = assertion(&source, 1);
        let (header, claims) = verify(&jwt, &cert);
        assert_eq!(
            header,
            json!({"alg": "PS256", "typ": "JWT", "x5t#S256": cert.thumbprint_sha256()})
        );
        let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
        assert_eq!(jti.len(), 36);
        assert_eq!(jti.as_bytes().get(14), Some(&b'4'), "uuid v4: {jti}");
        assert_eq!(
            claims,
            json!({
                "aud": "https://login.microsoftonline.com/72f988bf-0000-0000-0000-000000000000/oauth2/v2.0/token",
                "iss": "11111111-2222-3333-4444-555555555555",
                "sub": "11111111-2222-3333-4444-555555555555",
                "jti": jti,
                "iat": WALL, "nbf": WALL, "exp": WALL + 600,
            })
        );
        assert_ne!(
            assertion(&source, 1),
            assertion(&source, 2),
            "fresh jti and salt"
        );
    }

    #[test]
    fn pss_salt_is_fresh_even_with_the_same_seed() {
        let source = ClientCertificate::new(client(), credential(PKCS8_PEM, None));
        let one = assertion(&source, 7);
        let two = assertion(&source, 7);
        let payload = |jwt: &str| jwt.rsplit_once('.').map(|(p, _)| p.to_owned());
        assert_eq!(payload(&one), payload(&two), "same jti, same claims");
        assert_ne!(one, two, "RSASSA-PSS is randomized by its salt");
    }

    #[test]
    fn rs256_assertion_from_pkcs1_pem_verifies_with_x5t() {
        let cert = credential(PKCS1_PEM, None);
        let source = ClientCertificate::new(client(), cert.clone())
            .with_algorithm(AssertionAlgorithm::Rs256);
        let (header, _) = verify(&assertion(&source, 3), &cert);
        assert_eq!(
            header,
            json!({"alg": "RS256", "typ": "JWT", "x5t": cert.thumbprint_sha1()})
        );
        assert_eq!(
            assertion(&source, 3),
            assertion(&source, 3),
            "PKCS#1 v1.5 signatures are deterministic"
        );
    }

    #[cfg(feature = "pkcs12")]
    #[test]
    fn both_algorithms_from_pkcs12_verify() {
        let p12 = credential(P12, Some(P12_PASSWORD));
        verify(
            &assertion(&ClientCertificate::new(client(), p12.clone()), 4),
            &p12,
        );
        let rs =
            ClientCertificate::new(client(), p12.clone()).with_algorithm(AssertionAlgorithm::Rs256);
        verify(&assertion(&rs, 5), &p12);
    }

    #[test]
    fn x5c_is_the_standard_base64_der_chain_leaf_first() {
        let cert = credential(PKCS1_PEM, None);
        let source = ClientCertificate::new(client(), cert.clone()).with_certificate_chain(true);
        let (header, _) = verify(&assertion(&source, 6), &cert);
        assert_eq!(
            header["x5c"],
            json!([
                STANDARD.encode(der_of(LEAF_PEM)),
                STANDARD.encode(der_of(CA_PEM))
            ])
        );
    }

    #[test]
    fn request_is_a_client_credentials_post_with_the_assertion() {
        let source = ClientCertificate::new(client(), credential(PKCS8_PEM, None));
        let request =
            source.build_request_with_seed(UNIX_EPOCH + Duration::from_secs(WALL), [9; 32]);
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(
            request.uri().to_string(),
            "https://login.microsoftonline.com/72f988bf-0000-0000-0000-000000000000/oauth2/v2.0/token"
        );
        let fields: Vec<(String, String)> = form_urlencoded::parse(request.body())
            .into_owned()
            .collect();
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "client_assertion",
                "client_assertion_type",
                "client_id",
                "grant_type",
                "scope"
            ]
        );
        assert_eq!(fields[1].1, JWT_BEARER);
        assert_eq!(fields[3].1, "client_credentials");
        assert_eq!(fields[4].1, "https://redis.azure.com/.default");
        assert_eq!(fields[0].1.split('.').count(), 3);
    }

    /// The PKCS#8 key block of the fixture, alone
    fn key_block() -> String {
        let text = String::from_utf8_lossy(PKCS8_PEM);
        let end = text.find("-----END PRIVATE KEY-----").unwrap_or(0) + 25;
        text.get(..end).unwrap_or_default().to_owned()
    }

    #[test]
    fn malformed_files_are_errors_that_name_the_problem() {
        let leaf = String::from_utf8_lossy(LEAF_PEM).into_owned();
        let ca = String::from_utf8_lossy(CA_PEM).into_owned();
        let cases: Vec<(String, &str)> = vec![
            (leaf.clone(), "no PRIVATE KEY"),
            (format!("{}\n{ca}", key_block()), "belongs to the private key"),
            (key_block(), "no CERTIFICATE"),
            (
                format!("-----BEGIN PRIVATE KEY-----\nnot*base64\n-----END PRIVATE KEY-----\n{leaf}"),
                "PRIVATE KEY is not valid base64",
            ),
            (
                format!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{leaf}"),
                "not a valid DER RSA private key",
            ),
            (
                format!("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n{leaf}"),
                "RSA PRIVATE KEY was rejected",
            ),
            (
                format!("{leaf}-----BEGIN PRIVATE KEY-----\nMIIE\n"),
                "PRIVATE KEY has no END line",
            ),
            ("-----BEGIN PRIVATE KEY\nMIIE".to_owned(), "no closing dashes"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----\n"
                    .to_owned(),
                "encrypted PEM keys are not supported",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nMIIE\n-----END RSA PRIVATE KEY-----\n"
                    .to_owned(),
                "encrypted PEM keys are not supported",
            ),
            (
                String::from_utf8_lossy(RSA1024_PEM).into_owned(),
                "smaller than 2048 bits",
            ),
            (
                String::from_utf8_lossy(EC_PEM).into_owned(),
                "not an RSA key",
            ),
        ];
        for (file, expected) in cases {
            let why = problem(load(file.as_bytes(), None));
            assert!(why.contains(expected), "{expected:?} not in {why:?}");
        }
        assert!(problem(load(b"\xff-----BEGIN", None)).contains("not text"));
        assert!(load(b"garbage", None).is_err());
    }

    #[test]
    fn a_certificate_with_broken_der_matches_no_key_and_never_panics() {
        let leaf = der_of(LEAF_PEM);
        for cut in [0, 1, 2, 4, 10, 100, leaf.len() / 2, leaf.len() - 1] {
            let truncated = leaf.get(..cut).unwrap_or_default();
            assert_eq!(certificate_public_key(truncated), None, "cut at {cut}");
        }
        assert!(certificate_public_key(&leaf).is_some());
        // A length field of 5 bytes, and one pointing past the end.
        assert_eq!(der_element(&[0x30, 0x85, 1, 0, 0, 0, 0]), None);
        assert_eq!(der_element(&[0x30, 0x82, 0x01, 0x00, 0xaa]), None);
        assert_eq!(
            der_element(&[0x02, 0x81, 0x01, 0x07, 0xff]),
            Some((0x02, &[0x07][..], &[0xff][..]))
        );
    }

    #[test]
    fn debug_hides_the_key_and_the_key_stays_in_zeroizing_storage() {
        let cert = credential(PKCS8_PEM, None);
        let printed = format!(
            "{cert:?} {:?}",
            ClientCertificate::new(client(), cert.clone())
        );
        assert!(
            !printed.contains("MII") && printed.contains("redacted"),
            "{printed}"
        );
        // The key is kept as SecretBytes (ZeroizeOnDrop), never as a parsed key pair.
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        zeroized_on_drop(&*cert.key);
    }

    #[test]
    fn env_configuration_matches_the_azure_sdks() {
        let mut map = BTreeMap::new();
        map.insert(env::AZURE_TENANT_ID, "t1");
        map.insert(env::AZURE_CLIENT_ID, "c1");
        map.insert(env::AZURE_CLIENT_CERTIFICATE_PATH, "/etc/app/cert.pem");
        map.insert(
            env::AZURE_CLIENT_CERTIFICATE_PASSWORD,
            "fixture-p12-password",
        );
        let file = ClientCertificateFile::from_env(&map);
        let Ok(file) = file else { panic!("{file:?}") };
        assert_eq!(file.path(), std::path::Path::new("/etc/app/cert.pem"));
        assert!(!file.sends_chain());
        assert!(!format!("{file:?}").contains("fixture-p12-password"));
        assert!(file.load(&SecretBytes::new(PKCS8_PEM.to_vec())).is_ok());
        #[cfg(feature = "pkcs12")]
        assert!(file.load(&SecretBytes::new(P12.to_vec())).is_ok());
        for (value, expected) in [
            ("1", true),
            ("TRUE", true),
            ("true", true),
            ("false", false),
            ("0", false),
        ] {
            map.insert(env::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN, value);
            let file = ClientCertificateFile::from_env(&map);
            assert_eq!(
                file.map(|f| f.sends_chain()).ok(),
                Some(expected),
                "{value}"
            );
        }
    }
}
