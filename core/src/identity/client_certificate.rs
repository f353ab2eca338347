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
//! The core reads no clock and no OS randomness: `wall` is an argument, and randomness (the PSS
//! salt, RSA blinding, the `jti`) comes from the caller's CSPRNG or from a 32-byte seed the
//! runtime filled from the OS ([`ClientCertificate::build_request_with_seed`]).
//!
//! Inputs: PEM (private key as `PRIVATE KEY` or `RSA PRIVATE KEY`, plus one or more
//! `CERTIFICATE` blocks, in any order) or PKCS#12 with a password (possibly empty). The leaf is the
//! certificate whose public key matches the private key. Only RSA keys are supported (as in every
//! Azure SDK).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::rand_core::{CryptoRng, SeedableRng};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};
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

/// An RSA private key with its certificate and chain
#[derive(Clone)]
pub struct CertificateCredential {
    key: Arc<rsa::PrivateKey>,
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

impl CertificateCredential {
    /// From a PEM file, a PKCS#12 archive, told apart as the Azure SDKs do (`-----BEGIN`)
    ///
    /// # Errors
    /// As [`CertificateCredential::from_pem`] and [`CertificateCredential::from_pkcs12`].
    pub fn from_bytes(
        data: &SecretBytes,
        password: Option<&SecretString>,
    ) -> Result<Self, ConfigError> {
        let bytes = data.expose_secret();
        if bytes.windows(10).any(|w| w == b"-----BEGIN") {
            Self::from_pem(data)
        } else {
            let empty = SecretString::default();
            Self::from_pkcs12(data, password.unwrap_or(&empty))
        }
    }

    /// From PEM text holding an RSA private key and its certificate(s)
    ///
    /// # Errors
    /// A [`ConfigError`] on `client_certificate` when there is no key, no certificate matching
    /// the key, the key is encrypted or not RSA, or a block is not valid PEM.
    pub fn from_pem(pem: &SecretBytes) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(pem.expose_secret())
            .map_err(|_| cert_error("the PEM file is not text"))?;
        let mut key = None;
        let mut certs = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let block = rest.get(start..).unwrap_or("");
            let label_end = block
                .get(11..)
                .and_then(|b| b.find("-----"))
                .ok_or_else(|| cert_error("a PEM block has no closing dashes"))?;
            let label = block.get(11..11 + label_end).unwrap_or("");
            let end_marker = format!("-----END {label}-----");
            let end = block
                .find(&end_marker)
                .ok_or_else(|| cert_error(format!("the PEM block {label} has no END line")))?
                + end_marker.len();
            let (decoded_label, der) = pem_rfc7468::decode_vec(
                block.get(..end).unwrap_or("").as_bytes(),
            )
            .map_err(|_| cert_error(format!("the PEM block {label} is not valid base64")))?;
            let der = Zeroizing::new(der);
            match decoded_label {
                "CERTIFICATE" => certs.push(der.to_vec()),
                "PRIVATE KEY" => {
                    key = Some(rsa::PrivateKey::from_pkcs8_der(&der).map_err(|_| {
                        cert_error("the PRIVATE KEY is not an RSA key (only RSA is supported)")
                    })?)
                }
                "RSA PRIVATE KEY" => {
                    key = Some(
                        rsa::PrivateKey::from_pkcs1_der(&der)
                            .map_err(|_| cert_error("the RSA PRIVATE KEY is not valid"))?,
                    )
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(cert_error(
                        "encrypted PEM keys are not supported: decrypt the key (openssl pkey) \
                         or use a PKCS#12 file with a password",
                    ))
                }
                _ => {}
            }
            rest = block.get(end..).unwrap_or("");
        }
        let key = key.ok_or_else(|| {
            cert_error("the PEM file has no PRIVATE KEY or RSA PRIVATE KEY block")
        })?;
        Self::assemble(key, certs)
    }

    /// From a PKCS#12 (PFX) archive and its password (empty when it has none)
    ///
    /// # Errors
    /// A [`ConfigError`] on `client_certificate` when the archive cannot be opened with the
    /// password, holds no private key, the key is not RSA, or no certificate matches it.
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
        let der = Zeroizing::new(chain.key().as_der().to_vec());
        let key = rsa::PrivateKey::from_pkcs8_der(&der)
            .map_err(|_| cert_error("the PKCS#12 key is not an RSA key (only RSA is supported)"))?;
        let mut certs: Vec<Vec<u8>> = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
        for (_, entry) in store.entries() {
            if let p12_keystore::KeyStoreEntry::Certificate(cert) = entry {
                if !certs.iter().any(|c| c.as_slice() == cert.as_der()) {
                    certs.push(cert.as_der().to_vec());
                }
            }
        }
        Self::assemble(key, certs)
    }

    /// Puts the certificate matching the key first
    fn assemble(key: rsa::PrivateKey, mut certs: Vec<Vec<u8>>) -> Result<Self, ConfigError> {
        if certs.is_empty() {
            return Err(cert_error("no CERTIFICATE found next to the private key"));
        }
        let public = key.to_public_key();
        let leaf = certs
            .iter()
            .position(|der| {
                x509_cert::Certificate::from_der(der)
                    .ok()
                    .and_then(|c| c.tbs_certificate().subject_public_key_info().to_der().ok())
                    .and_then(|spki| rsa::PublicKey::from_public_key_der(&spki).ok())
                    .is_some_and(|p| p == public)
            })
            .ok_or_else(|| cert_error("none of the certificates belongs to the private key"))?;
        let leaf_der = certs.remove(leaf);
        certs.insert(0, leaf_der);
        Ok(Self {
            key: Arc::new(key),
            chain: certs,
        })
    }

    /// base64url (unpadded) SHA-1 of the leaf DER: the `x5t` header
    pub fn thumbprint_sha1(&self) -> String {
        let leaf = self.chain.first().map(Vec::as_slice).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(Sha1::digest(leaf))
    }

    /// base64url (unpadded) SHA-256 of the leaf DER: the `x5t#S256` header
    pub fn thumbprint_sha256(&self) -> String {
        let leaf = self.chain.first().map(Vec::as_slice).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(Sha256::digest(leaf))
    }

    /// The certificates' DER, leaf first
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The public key, e.g. to verify an assertion
    pub fn public_key(&self) -> rsa::PublicKey {
        self.key.to_public_key()
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

    /// The signed client assertion for a request sent at `wall`
    ///
    /// # Errors
    /// A [`ConfigError`] on `client_certificate` when signing fails (e.g. a key too small for
    /// PSS with SHA-256).
    pub fn build_assertion<R: CryptoRng + ?Sized>(
        &self,
        wall: SystemTime,
        rng: &mut R,
    ) -> Result<SecretString, ConfigError> {
        let now = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let exp = now.saturating_add(ASSERTION_LIFETIME.as_secs());
        let mut jti = [0u8; 16];
        rng.fill_bytes(&mut jti);
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
        let key = (*self.certificate.key).clone();
        let signature = match self.algorithm {
            AssertionAlgorithm::Ps256 => rsa::pss::SigningKey::<Sha256>::new(key)
                .try_sign_with_rng(rng, signing_input.as_bytes())
                .map(|s| s.to_bytes()),
            AssertionAlgorithm::Rs256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
                .try_sign_with_rng(rng, signing_input.as_bytes())
                .map(|s| s.to_bytes()),
        }
        .map_err(|_| {
            cert_error("signing the client assertion failed; is the key at least 2048 bits?")
        })?;
        Ok(SecretString::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }

    /// The token request for a fetch sent at `wall`
    ///
    /// # Errors
    /// As [`ClientCertificate::build_assertion`], or a [`ConfigError`] for an invalid URL.
    pub fn build_request<R: CryptoRng + ?Sized>(
        &self,
        wall: SystemTime,
        rng: &mut R,
    ) -> Result<crate::identity::IdentityRequest, ConfigError> {
        let assertion = self.build_assertion(wall, rng)?;
        self.client.form_request(&[
            ("client_assertion", assertion.expose_secret()),
            ("client_assertion_type", JWT_BEARER),
        ])
    }

    /// [`ClientCertificate::build_request`] with a ChaCha20 CSPRNG seeded from `seed`, which the
    /// runtime fills from the operating system's random source for every fetch
    ///
    /// # Errors
    /// As [`ClientCertificate::build_request`].
    pub fn build_request_with_seed(
        &self,
        wall: SystemTime,
        seed: [u8; 32],
    ) -> Result<crate::identity::IdentityRequest, ConfigError> {
        let mut rng = chacha20::ChaCha20Rng::from_seed(seed);
        self.build_request(wall, &mut rng)
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
    use rsa::signature::Verifier;
    use std::collections::BTreeMap;

    const PKCS8_PEM: &[u8] = include_bytes!("../../test-fixtures/client-pkcs8.pem");
    const PKCS1_PEM: &[u8] = include_bytes!("../../test-fixtures/client-pkcs1.pem");
    const P12: &[u8] = include_bytes!("../../test-fixtures/client.p12");
    const P12_NO_PASSWORD: &[u8] = include_bytes!("../../test-fixtures/client-nopass.p12");
    const LEAF_PEM: &[u8] = include_bytes!("../../test-fixtures/leaf.crt");
    const CA_PEM: &[u8] = include_bytes!("../../test-fixtures/ca.crt");
    const P12_PASSWORD: &str = "fixture-p12-password";
    const WALL: u64 = 1_767_139_200;

    fn der_of(pem: &[u8]) -> Vec<u8> {
        pem_rfc7468::decode_vec(pem)
            .map(|(_, der)| der)
            .unwrap_or_default()
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

    fn credential(data: &[u8], password: Option<&str>) -> CertificateCredential {
        let password = password.map(SecretString::new);
        match CertificateCredential::from_bytes(&SecretBytes::new(data.to_vec()), password.as_ref())
        {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
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
        let public = cert.public_key();
        let ok = match header["alg"].as_str() {
            Some("PS256") => {
                let sig = rsa::pss::Signature::try_from(signature.as_slice());
                // salt length 32 is what VerifyingKey::new checks
                sig.is_ok_and(|sig| {
                    rsa::pss::VerifyingKey::<Sha256>::new(public)
                        .verify(message.as_bytes(), &sig)
                        .is_ok()
                })
            }
            Some("RS256") => {
                let sig = rsa::pkcs1v15::Signature::try_from(signature.as_slice());
                sig.is_ok_and(|sig| {
                    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public)
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
        let mut rng = chacha20::ChaCha20Rng::from_seed([seed; 32]);
        match cert.build_assertion(UNIX_EPOCH + Duration::from_secs(WALL), &mut rng) {
            Ok(a) => a.expose_secret().to_owned(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_input_form_loads_the_same_leaf_first() {
        let leaf = der_of(LEAF_PEM);
        let ca = der_of(CA_PEM);
        for cert in [
            credential(PKCS8_PEM, None),
            credential(PKCS1_PEM, None),
            credential(P12, Some(P12_PASSWORD)),
        ] {
            assert_eq!(cert.chain_der(), &[leaf.clone(), ca.clone()]);
        }
        assert_eq!(
            credential(P12_NO_PASSWORD, None).chain_der(),
            std::slice::from_ref(&leaf)
        );
        assert_eq!(
            credential(PKCS8_PEM, None).thumbprint_sha256(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(&leaf))
        );
        assert_eq!(
            credential(PKCS8_PEM, None).thumbprint_sha1(),
            URL_SAFE_NO_PAD.encode(Sha1::digest(&leaf))
        );
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
    fn rs256_assertion_from_pkcs12_verifies_with_x5t() {
        let cert = credential(P12, Some(P12_PASSWORD));
        let source = ClientCertificate::new(client(), cert.clone())
            .with_algorithm(AssertionAlgorithm::Rs256);
        let (header, _) = verify(&assertion(&source, 3), &cert);
        assert_eq!(
            header,
            json!({"alg": "RS256", "typ": "JWT", "x5t": cert.thumbprint_sha1()})
        );
    }

    #[test]
    fn ps256_from_pkcs12_and_rs256_from_pem_verify_too() {
        let p12 = credential(P12, Some(P12_PASSWORD));
        verify(
            &assertion(&ClientCertificate::new(client(), p12.clone()), 4),
            &p12,
        );
        let pem = credential(PKCS1_PEM, None);
        let rs =
            ClientCertificate::new(client(), pem.clone()).with_algorithm(AssertionAlgorithm::Rs256);
        verify(&assertion(&rs, 5), &pem);
    }

    #[test]
    fn x5c_is_the_standard_base64_der_chain_leaf_first() {
        let cert = credential(PKCS8_PEM, None);
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

    #[test]
    fn bad_inputs_are_config_errors_and_debug_hides_secrets() {
        let wrong = CertificateCredential::from_pkcs12(
            &SecretBytes::new(P12.to_vec()),
            &SecretString::new("wrong"),
        );
        assert!(wrong.is_err_and(|e| e.problem.contains("wrong password")));
        let only_cert = CertificateCredential::from_pem(&SecretBytes::new(LEAF_PEM.to_vec()));
        assert!(only_cert.is_err_and(|e| e.problem.contains("no PRIVATE KEY")));
        let mut key_and_ca = Vec::new();
        let key_end = PKCS8_PEM
            .windows(25)
            .position(|w| w == b"-----END PRIVATE KEY-----")
            .unwrap_or(0)
            + 25;
        key_and_ca.extend_from_slice(PKCS8_PEM.get(..key_end).unwrap_or_default());
        key_and_ca.extend_from_slice(b"\n");
        key_and_ca.extend_from_slice(CA_PEM);
        let mismatched = CertificateCredential::from_pem(&SecretBytes::new(key_and_ca));
        assert!(mismatched.is_err_and(|e| e.problem.contains("belongs to the private key")));
        let garbage =
            CertificateCredential::from_bytes(&SecretBytes::new(b"garbage".to_vec()), None);
        assert!(garbage.is_err());
        let cert = credential(PKCS8_PEM, None);
        let printed = format!(
            "{cert:?} {:?}",
            ClientCertificate::new(client(), cert.clone())
        );
        assert!(
            !printed.contains("MII") && printed.contains("redacted"),
            "{printed}"
        );
    }

    #[test]
    fn env_configuration_matches_the_azure_sdks() {
        let mut map = BTreeMap::new();
        map.insert(env::AZURE_TENANT_ID, "t1");
        map.insert(env::AZURE_CLIENT_ID, "c1");
        map.insert(env::AZURE_CLIENT_CERTIFICATE_PATH, "/etc/app/cert.p12");
        map.insert(env::AZURE_CLIENT_CERTIFICATE_PASSWORD, P12_PASSWORD);
        let file = ClientCertificateFile::from_env(&map);
        let Ok(file) = file else { panic!("{file:?}") };
        assert_eq!(file.path(), std::path::Path::new("/etc/app/cert.p12"));
        assert!(!file.sends_chain());
        assert!(!format!("{file:?}").contains(P12_PASSWORD));
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
