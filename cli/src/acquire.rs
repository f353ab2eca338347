//! One token, fetched exactly as the library fetches it, with what a person needs to know
//! about it: which source answered, the claims, the lifetime, how long the request took

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use redis_entraid_blocking::{Fetcher, HttpConfig, IdentityFetcher};
use redis_entraid_core::error::FetchError;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::token::{AccessToken, TokenResponse};
use serde_json::{json, Value};

use crate::error::CliError;

/// The audience Azure Managed Redis and Azure Cache for Redis accept
pub(crate) const REDIS_AUDIENCE: &str = "https://redis.azure.com";

/// The claims a person needs, read from the token's payload without checking its signature
/// (the server does that)
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenClaims {
    pub(crate) oid: Option<String>,
    pub(crate) tid: Option<String>,
    pub(crate) aud: Vec<String>,
    /// `appid` (v1 tokens) or `azp` (v2 tokens): the application the token was issued to
    pub(crate) app: Option<String>,
    pub(crate) iat: Option<i64>,
    pub(crate) exp: Option<i64>,
    /// `idtyp`: `app` for service principals and managed identities, `user` for people
    pub(crate) idtyp: Option<String>,
}

impl TokenClaims {
    /// Reads the payload of `token`; a token that is not a JWT gives empty claims
    pub(crate) fn read(token: &AccessToken) -> Self {
        let Some(payload) = token.expose_secret().split('.').nth(1) else {
            return Self::default();
        };
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
            return Self::default();
        };
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
            return Self::default();
        };
        let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
        let number = |k: &str| {
            map.get(k).and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_f64().map(|f| f as i64))
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
        };
        let aud = match map.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            oid: text("oid"),
            tid: text("tid"),
            aud,
            app: text("appid").or_else(|| text("azp")),
            iat: number("iat"),
            exp: number("exp"),
            idtyp: text("idtyp"),
        }
    }

    /// Whether the audience is one Redis accepts
    pub(crate) fn audience_is_redis(&self) -> bool {
        self.aud
            .iter()
            .any(|a| a.trim_end_matches('/') == REDIS_AUDIENCE)
    }
}

/// A token and what is known about it; the token itself is only ever shown on request
pub(crate) struct Acquired {
    pub(crate) token: TokenResponse,
    pub(crate) claims: TokenClaims,
    /// The flow that answered (for the default chain, the step that won)
    pub(crate) answered_by: String,
    pub(crate) took: Duration,
    pub(crate) received_wall: SystemTime,
}

impl Acquired {
    /// Seconds from now to the earliest expiry the response gives
    pub(crate) fn lifetime_left(&self) -> Option<i64> {
        let now = unix(self.received_wall);
        let by_exp = self.claims.exp.map(|exp| exp - now);
        let by_on = self.token.expires_on.map(|on| on - now);
        let by_in = self.token.expires_in;
        [by_exp, by_on, by_in].into_iter().flatten().min()
    }

    /// The JSON `token --json` prints (no token unless `show_token`)
    pub(crate) fn to_json(&self, show_token: bool) -> Value {
        let mut v = json!({
            "source": self.answered_by,
            "oid": self.claims.oid,
            "tid": self.claims.tid,
            "aud": self.claims.aud,
            "appid": self.claims.app,
            "idtyp": self.claims.idtyp,
            "issued_at": self.claims.iat,
            "expires_at": self.claims.exp,
            "lifetime_left_s": self.lifetime_left(),
            "request_ms": self.took.as_millis() as u64,
            "audience_ok": self.claims.audience_is_redis(),
        });
        if show_token {
            v["access_token"] = Value::String(self.token.access_token.expose_secret().to_owned());
        }
        v
    }
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether `source` is the VM's Instance Metadata Service
pub(crate) fn is_imds(source: &TokenSource) -> bool {
    matches!(
        source,
        TokenSource::ManagedIdentity(
            redis_entraid_core::identity::managed::ManagedIdentity::Imds(_)
        )
    )
}

/// A fetcher for `source` with the library's HTTP settings (`SSL_CERT_FILE` honoured)
///
/// # Errors
/// A usage error when the CA file cannot be read.
pub(crate) fn fetcher(source: TokenSource) -> Result<IdentityFetcher, CliError> {
    IdentityFetcher::new(source, &HttpConfig::default()).map_err(|e| {
        CliError::usage("cannot set up HTTPS for identity requests")
            .cause(e)
            .advice("check that SSL_CERT_FILE names a readable PEM file")
    })
}

/// Fetches one token through `fetcher` within `timeout`
///
/// # Errors
/// The fetch error, with advice for its cause.
pub(crate) fn acquire(
    fetcher: &IdentityFetcher,
    timeout: Duration,
) -> Result<Acquired, (FetchError, Duration)> {
    let started = Instant::now();
    let result = fetcher.fetch(timeout);
    let took = started.elapsed();
    let token = result.map_err(|e| (e, took))?;
    // For the default chain, the step that answered (the fetcher sticks to it from now on).
    let winner = fetcher.winner();
    let claims = TokenClaims::read(&token.access_token);
    Ok(Acquired {
        answered_by: winner.unwrap_or_else(|| fetcher.name()),
        claims,
        token,
        took,
        received_wall: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> AccessToken {
        AccessToken::new(format!(
            "eyJhbGciOiJub25lIn0.{}.sig",
            URL_SAFE_NO_PAD.encode(payload)
        ))
    }

    #[test]
    fn claims_read_v1_and_v2_application_ids_and_either_audience_form() {
        let v1 = TokenClaims::read(&jwt(
            r#"{"oid":"o","tid":"t","aud":"https://redis.azure.com","appid":"a1","iat":1,"exp":2}"#,
        ));
        assert_eq!(v1.oid.as_deref(), Some("o"));
        assert_eq!(v1.app.as_deref(), Some("a1"));
        assert!(v1.audience_is_redis());
        let v2 = TokenClaims::read(&jwt(
            r#"{"aud":["https://redis.azure.com/"],"azp":"a2","exp":"5"}"#,
        ));
        assert_eq!(v2.app.as_deref(), Some("a2"));
        assert_eq!(v2.exp, Some(5));
        assert!(v2.audience_is_redis());
        let other = TokenClaims::read(&jwt(r#"{"aud":"https://management.azure.com"}"#));
        assert!(!other.audience_is_redis());
    }

    #[test]
    fn a_token_that_is_not_a_jwt_gives_empty_claims() {
        for raw in ["", "opaque", "a.!!!.c", "a.bm90IGpzb24.c"] {
            let claims = TokenClaims::read(&AccessToken::new(raw));
            assert!(claims.oid.is_none() && claims.aud.is_empty(), "{raw}");
        }
    }
}
