//! Reads the claims Redis needs from a JWT, without checking its signature
//!
//! The client never validates the token (the server does); it only needs the `oid` for the Redis
//! username and the `exp` for scheduling. The payload is decoded with base64url (padding
//! optional, as Entra omits it) and parsed as JSON: never searched as a string. Error messages
//! never quote the token or its payload.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::Deserialize;
use std::borrow::Cow;

/// Tokens larger than this are rejected before decoding (Entra tokens are a few kilobytes).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The claims of an access token that matter to Redis
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claims {
    /// Object id of the principal: the Redis username
    pub oid: Option<String>,
    /// Expiry, Unix seconds
    pub exp: Option<i64>,
    /// Issued at, Unix seconds
    pub iat: Option<i64>,
    /// Not before, Unix seconds
    pub nbf: Option<i64>,
    /// Tenant id
    pub tid: Option<String>,
    /// Audiences (a single string in the token becomes one element)
    pub aud: Vec<String>,
}

impl Claims {
    /// The `oid`, or [`JwtError::MissingOid`]
    ///
    /// # Errors
    /// [`JwtError::MissingOid`] when the token has no (or an empty) `oid` claim.
    pub fn require_oid(&self) -> Result<&str, JwtError> {
        match self.oid.as_deref() {
            Some(oid) if !oid.trim().is_empty() => Ok(oid),
            _ => Err(JwtError::MissingOid),
        }
    }
}

/// Why a token's claims could not be read
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three dot-separated segments, empty, or too large
    #[error("the access token is not a JWT: {0}")]
    Malformed(&'static str),
    /// The payload segment is not valid base64url
    #[error("the access token's payload is not valid base64url")]
    Base64,
    /// The payload is not a JSON object of the expected shape
    #[error("the access token's payload is not valid JSON claims ({0})")]
    Json(String),
    /// No `oid` claim: Redis needs it as the username
    #[error("the access token has no oid claim, which Azure Redis needs as the username; request a token for a service principal or managed identity, or set a username override")]
    MissingOid,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience<'a> {
    #[serde(borrow)]
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumericDate {
    Int(i64),
    Float(f64),
}

impl NumericDate {
    fn seconds(self) -> i64 {
        match self {
            NumericDate::Int(v) => v,
            // `as` saturates for out-of-range floats and maps NaN to 0: never a panic.
            NumericDate::Float(v) => v as i64,
        }
    }
}

// Borrowed where the JSON has no escapes: decoding allocates only the claims we keep.
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow)]
    oid: Option<Cow<'a, str>>,
    exp: Option<NumericDate>,
    iat: Option<NumericDate>,
    nbf: Option<NumericDate>,
    #[serde(borrow)]
    tid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    aud: Option<Audience<'a>>,
}

/// Decodes the claims of a JWT without verifying it
///
/// ```
/// # use base64::Engine as _;
/// # let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
/// #     .encode(r#"{"oid":"1111-2222","exp":1900000000,"aud":"https://redis.azure.com"}"#);
/// # let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig");
/// let claims = redis_entraid_core::jwt::decode_claims(&token)?;
/// assert_eq!(claims.require_oid()?, "1111-2222");
/// assert_eq!(claims.exp, Some(1_900_000_000));
/// # Ok::<(), redis_entraid_core::jwt::JwtError>(())
/// ```
///
/// # Errors
/// [`JwtError`] when the token is not a three-segment JWT with a base64url JSON payload.
/// A missing `oid` is not an error here; call [`Claims::require_oid`].
pub fn decode_claims(token: &str) -> Result<Claims, JwtError> {
    if token.is_empty() {
        return Err(JwtError::Malformed("it is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("it is larger than 64 KiB"));
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(JwtError::Malformed(
            "it does not have three dot-separated segments",
        ));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(JwtError::Malformed(
            "its header or payload segment is empty",
        ));
    }
    let bytes = if payload.ends_with('=') {
        URL_SAFE.decode(payload)
    } else {
        URL_SAFE_NO_PAD.decode(payload)
    }
    .map_err(|_| JwtError::Base64)?;
    let raw: RawClaims = serde_json::from_slice(&bytes).map_err(|e| {
        // serde_json's message can quote the input; keep only its category and position.
        JwtError::Json(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    Ok(Claims {
        oid: raw.oid.map(Cow::into_owned),
        exp: raw.exp.map(NumericDate::seconds),
        iat: raw.iat.map(NumericDate::seconds),
        nbf: raw.nbf.map(NumericDate::seconds),
        tid: raw.tid.map(Cow::into_owned),
        aud: match raw.aud {
            None => Vec::new(),
            Some(Audience::One(a)) => vec![a.into_owned()],
            Some(Audience::Many(a)) => a.into_iter().map(Cow::into_owned).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(payload_json: &str) -> String {
        format!(
            "eyJhbGciOiJub25lIn0.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload_json)
        )
    }

    #[test]
    fn reads_every_claim_redis_needs() {
        let claims = decode_claims(&token_with(
            r#"{"oid":"o-1","exp":1700003600,"iat":1700000000,"nbf":1700000000,"tid":"t-1","aud":"https://redis.azure.com","extra":{"nested":[1,2]}}"#,
        ))
        .unwrap();
        assert_eq!(claims.oid.as_deref(), Some("o-1"));
        assert_eq!(claims.exp, Some(1_700_003_600));
        assert_eq!(claims.iat, Some(1_700_000_000));
        assert_eq!(claims.nbf, Some(1_700_000_000));
        assert_eq!(claims.tid.as_deref(), Some("t-1"));
        assert_eq!(claims.aud, vec!["https://redis.azure.com".to_owned()]);
    }

    #[test]
    fn audience_array_and_float_dates_are_accepted() {
        let claims = decode_claims(&token_with(
            r#"{"oid":"o","aud":["a","b"],"exp":1700000000.9}"#,
        ))
        .unwrap();
        assert_eq!(claims.aud, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(claims.exp, Some(1_700_000_000));
    }

    #[test]
    fn padded_payload_is_accepted() {
        let payload = URL_SAFE.encode(r#"{"oid":"o"}"#);
        assert!(payload.ends_with('='));
        let claims = decode_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims.oid.as_deref(), Some("o"));
    }

    #[test]
    fn missing_oid_is_an_error_never_a_fallback_username() {
        let claims = decode_claims(&token_with(r#"{"exp":1}"#)).unwrap();
        assert_eq!(claims.require_oid(), Err(JwtError::MissingOid));
        let claims = decode_claims(&token_with(r#"{"oid":"  "}"#)).unwrap();
        assert_eq!(claims.require_oid(), Err(JwtError::MissingOid));
    }

    #[test]
    fn oid_inside_another_claim_is_not_found_by_accident() {
        // A string search would find this; a JSON parse does not.
        let claims = decode_claims(&token_with(r#"{"name":"\"oid\":\"evil\""}"#)).unwrap();
        assert_eq!(claims.oid, None);
    }

    #[test]
    fn malformed_tokens_are_rejected_with_reasons() {
        assert!(matches!(decode_claims(""), Err(JwtError::Malformed(_))));
        assert!(matches!(decode_claims("a.b"), Err(JwtError::Malformed(_))));
        assert!(matches!(
            decode_claims("a.b.c.d"),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(decode_claims("a..c"), Err(JwtError::Malformed(_))));
        assert_eq!(decode_claims("a.!!!.c"), Err(JwtError::Base64));
        assert!(matches!(
            decode_claims(&token_with("[1,2]")),
            Err(JwtError::Json(_))
        ));
        assert!(matches!(
            decode_claims(&token_with(r#"{"oid":5}"#)),
            Err(JwtError::Json(_))
        ));
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(decode_claims(&huge), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn error_messages_never_quote_the_payload() {
        let err = decode_claims(&token_with(
            r#"{"oid":"SECRET-OID-VALUE","exp":"SECRETDATE"}"#,
        ))
        .unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }
}
