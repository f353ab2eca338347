//! JSON Web Tokens: RS256 signing of access tokens and RS256 / PS256 verification of tokens and
//! client assertions. The JOSE framing (base64url + JSON) is done here; every RSA operation is the
//! `rsa` crate's.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::Error;

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unpadded base64url.
pub(crate) fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes base64url with or without `=` padding.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.ends_with('=') {
        URL_SAFE.decode(s).ok()
    } else {
        URL_SAFE_NO_PAD.decode(s).ok()
    }
}

/// Generates a fresh 2048-bit RSA key.
pub(crate) fn generate_rsa_key() -> Result<RsaPrivateKey, Error> {
    let mut rng = rand_core::OsRng;
    RsaPrivateKey::new(&mut rng, 2048).map_err(|e| Error::Crypto(e.to_string()))
}

/// The process-wide emulator signing key (RSA key generation is slow; tests start many emulators).
pub(crate) fn shared_rsa_key() -> Result<RsaPrivateKey, Error> {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k.clone());
    }
    let k = generate_rsa_key()?;
    Ok(KEY.get_or_init(|| k).clone())
}

/// Signature algorithms understood by the emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
    Ps256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
        }
    }
}

/// An RSA key that signs JWTs.
#[derive(Clone)]
pub(crate) struct JwtSigner {
    key: RsaPrivateKey,
    public: RsaPublicKey,
    kid: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    pub(crate) fn new(key: RsaPrivateKey) -> Self {
        let public = key.to_public_key();
        let der = public
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let kid = b64url(&sha2_digest(&der)[..16]);
        Self { key, public, kid }
    }

    pub(crate) fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    pub(crate) fn public_key_pem(&self) -> String {
        self.public
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` with the given algorithm; `header` entries are added to `alg`/`typ`.
    pub(crate) fn sign(&self, alg: Alg, header: Map<String, Value>, claims: &Value) -> String {
        let mut h = Map::new();
        h.insert("typ".into(), Value::from("JWT"));
        h.insert("alg".into(), Value::from(alg.name()));
        for (k, v) in header {
            h.insert(k, v);
        }
        let input = format!(
            "{}.{}",
            b64url(Value::Object(h).to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = match alg {
            Alg::Rs256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(self.key.clone())
                .sign(input.as_bytes())
                .to_vec(),
            Alg::Ps256 => rsa::pss::SigningKey::<Sha256>::new(self.key.clone())
                .sign_with_rng(&mut rand_core::OsRng, input.as_bytes())
                .to_vec(),
        };
        format!("{input}.{}", b64url(&sig))
    }

    /// Signs an access token with RS256 and this key's `kid`.
    pub(crate) fn sign_access_token(&self, claims: &Value) -> String {
        let mut header = Map::new();
        header.insert("kid".into(), Value::from(self.kid.clone()));
        header.insert("x5t".into(), Value::from(self.kid.clone()));
        self.sign(Alg::Rs256, header, claims)
    }
}

pub(crate) fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(data).into()
}

pub(crate) fn sha1_digest(data: &[u8]) -> [u8; 20] {
    use sha1::Digest as _;
    sha1::Sha1::digest(data).into()
}

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtError {
    /// Not three base64url segments of JSON objects.
    #[error("malformed JWT")]
    Malformed,
    /// `alg` is missing or not one the verifier accepts.
    #[error("unsupported algorithm")]
    UnsupportedAlg,
    /// The signature does not verify against the key.
    #[error("bad signature")]
    BadSignature,
}

/// A JWT split into its parts; the signature has not been checked yet.
pub(crate) struct Decoded<'a> {
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl std::fmt::Debug for Decoded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<'a> Decoded<'a> {
    pub(crate) fn parse(token: &'a str) -> Result<Self, JwtError> {
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let obj = |seg: &str| -> Result<Map<String, Value>, JwtError> {
            let bytes = b64url_decode(seg).ok_or(JwtError::Malformed)?;
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(JwtError::Malformed),
            }
        };
        let header = obj(h)?;
        let claims = obj(c)?;
        let signature = b64url_decode(s).ok_or(JwtError::Malformed)?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        Ok(Self {
            header,
            claims,
            signing_input,
            signature,
        })
    }

    pub(crate) fn alg(&self) -> Option<Alg> {
        match self.header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Some(Alg::Rs256),
            Some("PS256") => Some(Alg::Ps256),
            _ => None,
        }
    }

    /// Verifies the signature with `key`, accepting only the algorithms in `allowed`.
    pub(crate) fn verify(&self, key: &RsaPublicKey, allowed: &[Alg]) -> Result<(), JwtError> {
        let alg = self.alg().ok_or(JwtError::UnsupportedAlg)?;
        if !allowed.contains(&alg) {
            return Err(JwtError::UnsupportedAlg);
        }
        let msg = self.signing_input.as_bytes();
        let ok = match alg {
            Alg::Rs256 => rsa::pkcs1v15::Signature::try_from(self.signature.as_slice())
                .ok()
                .map(|sig| {
                    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
                        .verify(msg, &sig)
                        .is_ok()
                }),
            Alg::Ps256 => rsa::pss::Signature::try_from(self.signature.as_slice())
                .ok()
                .map(|sig| {
                    rsa::pss::VerifyingKey::<Sha256>::new(key.clone())
                        .verify(msg, &sig)
                        .is_ok()
                }),
        };
        if ok == Some(true) {
            Ok(())
        } else {
            Err(JwtError::BadSignature)
        }
    }

    pub(crate) fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A numeric claim; accepts integers, decimals and numeric strings.
    pub(crate) fn claim_num(&self, name: &str) -> Option<u64> {
        match self.claims.get(name)? {
            Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// True when `aud` equals `expected` or is an array containing it.
    pub(crate) fn has_audience(&self, expected: &str) -> bool {
        match self.claims.get("aud") {
            Some(Value::String(s)) => s == expected,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(expected)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let signer = JwtSigner::new(shared_rsa_key().expect("key"));
        let claims = serde_json::json!({"oid": "a", "exp": 10});
        for alg in [Alg::Rs256, Alg::Ps256] {
            let t = signer.sign(alg, Map::new(), &claims);
            let d = Decoded::parse(&t).expect("parse");
            assert_eq!(d.verify(signer.public_key(), &[alg]), Ok(()));
            assert_eq!(d.claim_num("exp"), Some(10));
            let mut bad = t.clone();
            bad.push('A');
            let d = Decoded::parse(&bad).expect("parse");
            assert!(d.verify(signer.public_key(), &[alg]).is_err());
        }
        assert!(Decoded::parse("a.b").is_err());
        assert!(Decoded::parse("!!.!!.!!").is_err());
    }
}
