//! Issuing and verifying the emulator's access tokens.

use std::time::Duration;

use rsa::RsaPublicKey;
use serde_json::Value;

use crate::identity::{guid, Subject};
use crate::jwt::{now_secs, Alg, Decoded, JwtSigner};

/// The audience Azure Managed Redis accepts.
pub const REDIS_AUDIENCE: &str = "https://redis.azure.com";
/// The audience of Kubernetes service-account tokens exchanged for Entra tokens.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// What to put into a token minted with [`Emulator::mint_token`](crate::Emulator::mint_token).
#[derive(Clone, Debug)]
pub struct TokenSpec {
    pub(crate) oid: Option<String>,
    pub(crate) appid: Option<String>,
    pub(crate) audience: String,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) expired: bool,
}

impl TokenSpec {
    /// A Redis token (`aud` = `https://redis.azure.com`) for the object ID `oid`, with the
    /// emulator's configured lifetime.
    pub fn for_oid(oid: impl Into<String>) -> Self {
        Self {
            oid: Some(oid.into()),
            appid: None,
            audience: REDIS_AUDIENCE.into(),
            lifetime: None,
            expired: false,
        }
    }

    /// Sets the lifetime (rounded up to whole seconds, at least one).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// Sets `aud`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Sets `appid`.
    pub fn appid(mut self, appid: impl Into<String>) -> Self {
        self.appid = Some(appid.into());
        self
    }

    /// Makes `exp` lie 60 s in the past.
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }

    /// Leaves out `oid`.
    pub fn without_oid(mut self) -> Self {
        self.oid = None;
        self
    }
}

/// An issued access token and its times (`Debug` leaves the token out).
pub(crate) struct Issued {
    pub(crate) token: String,
    pub(crate) nbf: u64,
    pub(crate) exp: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("nbf", &self.nbf)
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

impl Issued {
    pub(crate) fn expires_in(&self) -> u64 {
        self.exp.saturating_sub(now_secs())
    }
}

pub(crate) fn whole_secs(d: Duration) -> u64 {
    let s = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    s.max(1)
}

/// Signs access tokens for a tenant.
#[derive(Debug)]
pub(crate) struct Issuer {
    pub(crate) signer: JwtSigner,
    pub(crate) tenant_id: String,
    pub(crate) lifetime: Duration,
}

impl Issuer {
    pub(crate) fn issuer_url(&self) -> String {
        format!("https://sts.windows.net/{}/", self.tenant_id)
    }

    pub(crate) fn mint(&self, spec: &TokenSpec) -> Issued {
        let appid = spec.appid.clone().unwrap_or_else(guid);
        self.build(&Claims {
            oid: spec.oid.as_deref(),
            appid: &appid,
            mirid: None,
            audience: &spec.audience,
            appidacr: "2",
            lifetime: spec.lifetime.unwrap_or(self.lifetime),
            expired: spec.expired,
        })
    }

    /// Issues a token for `subject` and `resource`; `without_oid` / `expired` shape faulty tokens.
    pub(crate) fn issue(
        &self,
        subject: &Subject,
        resource: &str,
        appidacr: &str,
        without_oid: bool,
        expired: bool,
    ) -> Issued {
        self.build(&Claims {
            oid: (!without_oid).then_some(subject.oid.as_str()),
            appid: &subject.appid,
            mirid: subject.mirid.as_deref(),
            audience: resource,
            appidacr,
            lifetime: self.lifetime,
            expired,
        })
    }

    fn build(&self, c: &Claims<'_>) -> Issued {
        let now = now_secs();
        let life = whole_secs(c.lifetime);
        let (iat, exp) = if c.expired {
            (
                now.saturating_sub(life.saturating_add(60)),
                now.saturating_sub(60),
            )
        } else {
            (now, now.saturating_add(life))
        };
        let mut m = serde_json::Map::new();
        m.insert("aud".into(), c.audience.into());
        m.insert("iss".into(), self.issuer_url().into());
        m.insert("iat".into(), iat.into());
        m.insert("nbf".into(), iat.into());
        m.insert("exp".into(), exp.into());
        m.insert("tid".into(), self.tenant_id.clone().into());
        m.insert("appid".into(), c.appid.into());
        m.insert("appidacr".into(), c.appidacr.into());
        m.insert("idtyp".into(), "app".into());
        m.insert("uti".into(), guid().replace('-', "").into());
        m.insert("ver".into(), "1.0".into());
        if let Some(oid) = c.oid {
            m.insert("oid".into(), oid.into());
            m.insert("sub".into(), oid.into());
        }
        if let Some(mirid) = c.mirid {
            m.insert("xms_mirid".into(), mirid.into());
        }
        Issued {
            token: self.signer.sign_access_token(&Value::Object(m)),
            nbf: iat,
            exp,
        }
    }
}

struct Claims<'a> {
    oid: Option<&'a str>,
    appid: &'a str,
    mirid: Option<&'a str>,
    audience: &'a str,
    appidacr: &'a str,
    lifetime: Duration,
    expired: bool,
}

/// Why the Redis proxy refused a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    Signature,
    Audience,
    Expired,
    NotYetValid,
    NoOid,
    UsernameMismatch,
}

/// Verifies a Redis `AUTH` token and returns its `exp`.
pub(crate) fn verify_redis_token(
    key: &RsaPublicKey,
    username: &str,
    token: &str,
) -> Result<u64, Refusal> {
    let d = Decoded::parse(token).map_err(|_| Refusal::Malformed)?;
    d.verify(key, &[Alg::Rs256])
        .map_err(|_| Refusal::Signature)?;
    if !(d.has_audience(REDIS_AUDIENCE) || d.has_audience("https://redis.azure.com/")) {
        return Err(Refusal::Audience);
    }
    let now = now_secs();
    let exp = d.claim_num("exp").ok_or(Refusal::Malformed)?;
    if exp <= now {
        return Err(Refusal::Expired);
    }
    if d.claim_num("nbf").is_some_and(|nbf| nbf > now + 5) {
        return Err(Refusal::NotYetValid);
    }
    let oid = d.claim_str("oid").ok_or(Refusal::NoOid)?;
    if oid != username {
        return Err(Refusal::UsernameMismatch);
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_lifetimes_do_not_overflow() {
        let issuer = Issuer {
            signer: JwtSigner::new(crate::jwt::shared_rsa_key().expect("key")),
            tenant_id: "t".into(),
            lifetime: Duration::MAX,
        };
        let forever = issuer.mint(&TokenSpec::for_oid("o"));
        assert_eq!(forever.exp, u64::MAX);
        let key = issuer.signer.public_key().clone();
        assert_eq!(verify_redis_token(&key, "o", &forever.token), Ok(u64::MAX));
        assert!(issuer.mint(&TokenSpec::for_oid("o").expired()).exp < now_secs());
    }
}
