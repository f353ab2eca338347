//! Certificates: the emulator's own CA and TLS server certificate (ECDSA P-256, generated with
//! `rcgen`), and RSA client certificates for the certificate-credential flow.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rsa::pkcs8::{DecodePublicKey, EncodePrivateKey, LineEnding};
use rsa::RsaPublicKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Map, Value};
use x509_cert::der::{Decode, Encode};

use crate::jwt::{b64url, now_secs, sha1_digest, sha2_digest, Alg, JwtSigner};
use crate::Error;

/// The emulator's CA and the server certificate it signed for `127.0.0.1` and `localhost`.
pub(crate) struct ServerTls {
    pub(crate) ca_pem: String,
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// Upper-case hex SHA-1 of the server certificate's DER, as Service Fabric's
    /// `IDENTITY_SERVER_THUMBPRINT` carries it
    pub(crate) server_thumbprint_sha1: String,
}

pub(crate) fn server_tls() -> Result<ServerTls, Error> {
    let tls = |e: rcgen::Error| Error::Tls(e.to_string());
    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "redis-entraid-emulator CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;

    let server_key = KeyPair::generate().map_err(tls)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(tls)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "redis-entraid-emulator");
    let server_cert = params
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(tls)?;

    let chain = vec![
        CertificateDer::from(server_cert.der().to_vec()),
        CertificateDer::from(ca_cert.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let server_thumbprint_sha1 = sha1_digest(server_cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    Ok(ServerTls {
        ca_pem: ca_cert.pem(),
        config: Arc::new(config),
        server_thumbprint_sha1,
    })
}

/// The RSA public key of a DER X.509 certificate.
pub(crate) fn certificate_public_key(der: &[u8]) -> Result<RsaPublicKey, Error> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| Error::Config(format!("not an X.509 certificate: {e}")))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| Error::Config(format!("bad certificate key: {e}")))?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| Error::Config(format!("certificate key is not RSA: {e}")))
}

/// DER bytes of the first `CERTIFICATE` block of a PEM text, or the input itself when it is DER.
pub(crate) fn certificate_der(pem_or_der: &[u8]) -> Result<Vec<u8>, Error> {
    use rustls::pki_types::pem::PemObject as _;
    if pem_or_der.windows(10).any(|w| w == b"-----BEGIN") {
        let der = CertificateDer::from_pem_slice(pem_or_der)
            .map_err(|e| Error::Config(format!("bad PEM certificate: {e}")))?;
        return Ok(der.to_vec());
    }
    Ok(pem_or_der.to_vec())
}

/// An RSA client certificate with its private key, for the Entra client-certificate flow.
///
/// Register it with [`EmulatorBuilder::client_certificate`](crate::EmulatorBuilder::client_certificate)
/// and make client assertions with [`ClientCertificate::assertion`] (or hand
/// [`ClientCertificate::pem`] to the library under test).
#[derive(Clone)]
pub struct ClientCertificate {
    signer: JwtSigner,
    cert_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.thumbprint_sha256())
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Generates a self-signed certificate for a fresh 2048-bit RSA key.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let key = crate::jwt::generate_rsa_key()?;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| Error::Crypto(e.to_string()))?;
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::Crypto(e.to_string()))?
            .to_string();
        let kp = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .map_err(|e| Error::Tls(e.to_string()))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| Error::Tls(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params
            .self_signed(&kp)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Self {
            signer: JwtSigner::new(key),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Private key (PKCS#8 PEM) followed by the certificate: the file format of
    /// `AZURE_CLIENT_CERTIFICATE_PATH`. Contains the private key: do not log it.
    pub fn pem(&self) -> String {
        format!("{}{}", self.key_pem, self.cert_pem)
    }

    /// `x5t`: base64url SHA-1 thumbprint of the DER certificate.
    pub fn thumbprint_sha1(&self) -> String {
        b64url(&sha1_digest(&self.cert_der))
    }

    /// `x5t#S256`: base64url SHA-256 thumbprint of the DER certificate.
    pub fn thumbprint_sha256(&self) -> String {
        b64url(&sha2_digest(&self.cert_der))
    }

    /// A client assertion as Entra expects it: PS256 with `x5t#S256`, or RS256 with `x5t`;
    /// `aud` = `token_url`, `iss` = `sub` = `client_id`, a fresh `jti`, valid for 10 minutes.
    /// Build invalid ones with [`Self::assertion_with_claims`].
    pub fn assertion(&self, alg: Alg, client_id: &str, token_url: &str) -> String {
        let now = now_secs();
        self.assertion_with_claims(
            alg,
            serde_json::json!({
                "aud": token_url, "iss": client_id, "sub": client_id,
                "jti": crate::identity::guid(), "nbf": now, "iat": now, "exp": now + 600,
            }),
        )
    }

    /// A client assertion with exactly the given claims (to build invalid ones in tests).
    pub fn assertion_with_claims(&self, alg: Alg, claims: Value) -> String {
        let mut header = Map::new();
        match alg {
            Alg::Ps256 => header.insert("x5t#S256".into(), Value::from(self.thumbprint_sha256())),
            Alg::Rs256 => header.insert("x5t".into(), Value::from(self.thumbprint_sha1())),
        };
        self.signer.sign(alg, header, &claims)
    }
}
