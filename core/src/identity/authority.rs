//! Authority hosts, tenants, scopes and resources
//!
//! | item | default |
//! |---|---|
//! | authority host | `https://login.microsoftonline.com` ([`Authority::PUBLIC`]) |
//! | scope (Entra token endpoint, CLIs) | `https://redis.azure.com/.default` ([`DEFAULT_SCOPE`]) |
//! | resource (managed-identity endpoints) | `https://redis.azure.com` ([`DEFAULT_RESOURCE`]) |
//!
//! An authority must be `https`; plain `http` is accepted only for loopback hosts (`127.0.0.0/8`,
//! `localhost`, `[::1]`) so a local emulator works.

use std::fmt;
// `core::net`, not `std::net`: address values and their parsers (is this host loopback?),
// no socket API in reach.
use core::net::{IpAddr, Ipv6Addr};

use crate::error::ConfigError;

/// Scope for Azure Managed Redis and Azure Cache for Redis, in every cloud
pub const DEFAULT_SCOPE: &str = "https://redis.azure.com/.default";
/// The v1 resource managed-identity endpoints take: the scope without `/.default`
pub const DEFAULT_RESOURCE: &str = "https://redis.azure.com";

/// The v1 resource for a v2 scope: `https://redis.azure.com/.default` -> `https://redis.azure.com`
///
/// ```
/// use redis_entraid_core::identity::authority::scope_to_resource;
/// assert_eq!(scope_to_resource("https://redis.azure.com/.default"), "https://redis.azure.com");
/// assert_eq!(scope_to_resource("https://redis.azure.com"), "https://redis.azure.com");
/// ```
pub fn scope_to_resource(scope: &str) -> &str {
    scope
        .trim()
        .strip_suffix("/.default")
        .unwrap_or(scope.trim())
}

/// Checks a scope: non-empty, no whitespace, ends with `/.default` (client credentials need it)
///
/// # Errors
/// A [`ConfigError`] on field `scope` when the scope is empty, contains whitespace (only one
/// resource per request) or does not end with `/.default`.
pub fn validate_scope(scope: &str) -> Result<(), ConfigError> {
    if scope.is_empty() || scope.chars().any(char::is_whitespace) {
        return Err(ConfigError::new(
            "scope",
            "give exactly one scope without spaces, e.g. https://redis.azure.com/.default",
        ));
    }
    if !scope.ends_with("/.default") {
        return Err(ConfigError::new(
            "scope",
            format!("`{scope}` must end with /.default, e.g. https://redis.azure.com/.default"),
        ));
    }
    Ok(())
}

/// Where Entra ID's token endpoint lives: `https://login.microsoftonline.com` unless changed
#[derive(Clone, PartialEq, Eq)]
pub struct Authority(String);

impl Authority {
    /// Azure public cloud
    pub const PUBLIC: &'static str = "https://login.microsoftonline.com";
    /// Azure US Government
    pub const US_GOVERNMENT: &'static str = "https://login.microsoftonline.us";
    /// Azure China (21Vianet)
    pub const CHINA: &'static str = "https://login.chinacloudapi.cn";

    /// The public cloud authority
    pub fn public() -> Self {
        Self(Self::PUBLIC.to_owned())
    }

    /// The US Government cloud authority
    pub fn us_government() -> Self {
        Self(Self::US_GOVERNMENT.to_owned())
    }

    /// The China cloud authority
    pub fn china() -> Self {
        Self(Self::CHINA.to_owned())
    }

    /// A custom authority host, normalised as the Azure SDKs do (`AZURE_AUTHORITY_HOST` rules)
    ///
    /// Spaces and trailing `/` are stripped; a bare host gets `https://`. A path is kept (Azure
    /// Stack and ADFS-style authorities have one).
    ///
    /// ```
    /// use redis_entraid_core::identity::authority::Authority;
    /// let a = Authority::parse("login.microsoftonline.us/").unwrap();
    /// assert_eq!(a.as_str(), "https://login.microsoftonline.us");
    /// assert!(Authority::parse("http://login.example.com").is_err());
    /// assert!(Authority::parse("http://127.0.0.1:8080").is_ok());
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] on field `authority_host` when the text is not a URL, has a query, or
    /// uses plain `http` for a host that is not loopback.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let trimmed = text.trim().trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(ConfigError::new(
                "authority_host",
                "empty; leave it unset for the public cloud or give e.g. https://login.microsoftonline.us",
            ));
        }
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("https://{trimmed}")
        };
        let uri: http::Uri = with_scheme.parse().map_err(|_| {
            ConfigError::new(
                "authority_host",
                format!(
                    "`{trimmed}` is not a valid URL; give e.g. https://login.microsoftonline.com"
                ),
            )
        })?;
        let host = uri.host().unwrap_or_default();
        if host.is_empty() || uri.query().is_some() {
            return Err(ConfigError::new(
                "authority_host",
                format!(
                    "`{trimmed}` needs a host and no query, e.g. https://login.microsoftonline.com"
                ),
            ));
        }
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback_host(host) => {}
            _ => {
                return Err(ConfigError::new(
                    "authority_host",
                    format!(
                        "`{trimmed}` must use https (plain http is allowed only for 127.0.0.1, \
                         localhost and [::1], for emulators)"
                    ),
                ))
            }
        }
        Ok(Self(with_scheme))
    }

    /// The normalised authority, without trailing `/`
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the authority is on this machine (plain http allowed, no proxy)
    pub fn is_loopback(&self) -> bool {
        self.0
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(is_loopback_host))
            .unwrap_or(false)
    }

    /// The v2 token endpoint for a tenant: `{authority}/{tenant}/oauth2/v2.0/token`
    pub fn token_url(&self, tenant: &TenantId) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.0, tenant.as_str())
    }

    /// The regional authority (ESTS-R) for `region`, by MSAL's rule
    ///
    /// The public cloud's hosts (`login.microsoftonline.com`, `login.microsoft.com`,
    /// `login.windows.net`, `sts.windows.net`) become `https://{region}.login.microsoft.com`;
    /// any other cloud's host becomes `https://{region}.{host}` (so
    /// `login.microsoftonline.us` becomes `{region}.login.microsoftonline.us`). The region is
    /// lower-cased.
    ///
    /// ```
    /// use redis_entraid_core::identity::authority::Authority;
    /// let regional = Authority::public().regional("WestUS2").unwrap();
    /// assert_eq!(regional.as_str(), "https://westus2.login.microsoft.com");
    /// assert!(Authority::parse("http://127.0.0.1:8080").unwrap().regional("westus2").is_err());
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] on field `region` when the region is not one DNS label (letters,
    /// digits, `-`), or when this authority has no regional form: a loopback or IP-address host
    /// (an emulator), or a path (ADFS, Azure Stack), which MSAL does not regionalise either.
    pub fn regional(&self, region: &str) -> Result<Self, ConfigError> {
        let region = region.trim().to_ascii_lowercase();
        let label_ok = (1..=63).contains(&region.len())
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !region.starts_with('-')
            && !region.ends_with('-');
        if !label_ok {
            return Err(ConfigError::new(
                "region",
                format!(
                    "`{}` is not an Azure region name; give one like westus2 or eastus                      (AZURE_REGIONAL_AUTHORITY_NAME), or TryAutoDetect",
                    super::common::clip(&region)
                ),
            ));
        }
        let refuse = |why: &str| {
            Err(ConfigError::new(
                "region",
                format!(
                    "the authority {} has no regional endpoint ({why}); unset                      AZURE_REGIONAL_AUTHORITY_NAME",
                    self.0
                ),
            ))
        };
        let Ok(uri) = self.0.parse::<http::Uri>() else {
            return refuse("not a URL");
        };
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if is_loopback_host(&host) || bare.parse::<IpAddr>().is_ok() {
            return refuse("its host is an address, e.g. an emulator");
        }
        if !matches!(uri.path(), "" | "/") {
            return refuse("it has a path, as ADFS and Azure Stack authorities do");
        }
        let regional_host = if PUBLIC_HOSTS.contains(&host.as_str()) {
            format!("{region}.login.microsoft.com")
        } else {
            format!("{region}.{host}")
        };
        let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
        Ok(Self(format!("https://{regional_host}{port}")))
    }
}

/// The public cloud's global authority hosts, which share one regional host
/// (`{region}.login.microsoft.com`), as in MSAL
const PUBLIC_HOSTS: [&str; 4] = [
    "login.microsoftonline.com",
    "login.microsoft.com",
    "login.windows.net",
    "sts.windows.net",
];

impl Default for Authority {
    fn default() -> Self {
        Self::public()
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Authority").field(&self.0).finish()
    }
}

/// Whether a URL host names this machine: `127.0.0.0/8`, `localhost`, `::1`
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
        || bare
            .parse::<Ipv6Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// A tenant for client credentials: a GUID or a verified domain, never `common`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantId(String);

impl TenantId {
    /// Checks a tenant id the way Entra and the Azure SDKs do
    ///
    /// ```
    /// use redis_entraid_core::identity::authority::TenantId;
    /// assert!(TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").is_ok());
    /// assert!(TenantId::parse("contoso.onmicrosoft.com").is_ok());
    /// assert!(TenantId::parse("common").is_err());
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] on field `tenant_id` when it is empty, contains characters other than
    /// `A-Z a-z 0-9 . -`, or is one of the multi-tenant aliases `common`, `organizations`,
    /// `consumers` (Entra answers AADSTS50059 to those for client credentials).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let tenant = text.trim();
        if tenant.is_empty() {
            return Err(ConfigError::new(
                "tenant_id",
                "missing: client credentials need the directory (tenant) id or a verified domain; \
                 set AZURE_TENANT_ID",
            ));
        }
        if !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(ConfigError::new(
                "tenant_id",
                "may contain only A-Z, a-z, 0-9, '.' and '-': give the tenant GUID or a verified domain",
            ));
        }
        if ["common", "organizations", "consumers"]
            .iter()
            .any(|alias| tenant.eq_ignore_ascii_case(alias))
        {
            return Err(ConfigError::new(
                "tenant_id",
                format!(
                    "`{tenant}` is a multi-tenant alias, which Entra rejects for client credentials \
                     (AADSTS50059); give the tenant GUID or a verified domain"
                ),
            ));
        }
        Ok(Self(tenant.to_owned()))
    }

    /// The tenant as text
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_public_cloud_and_redis_scope() {
        assert_eq!(
            Authority::default().as_str(),
            "https://login.microsoftonline.com"
        );
        assert_eq!(DEFAULT_SCOPE, "https://redis.azure.com/.default");
        assert_eq!(DEFAULT_RESOURCE, "https://redis.azure.com");
        assert_eq!(scope_to_resource(DEFAULT_SCOPE), DEFAULT_RESOURCE);
    }

    #[test]
    fn sovereign_clouds_have_their_hosts() {
        assert_eq!(
            Authority::china().as_str(),
            "https://login.chinacloudapi.cn"
        );
        assert_eq!(
            Authority::us_government().as_str(),
            "https://login.microsoftonline.us"
        );
    }

    #[test]
    fn authority_host_is_normalised_and_must_be_https_unless_loopback() {
        let ok = |s: &str| Authority::parse(s).map(|a| a.as_str().to_owned());
        assert_eq!(
            ok(" https://login.microsoftonline.com/ ").ok().as_deref(),
            Some("https://login.microsoftonline.com")
        );
        assert_eq!(
            ok("login.chinacloudapi.cn").ok().as_deref(),
            Some("https://login.chinacloudapi.cn")
        );
        assert_eq!(
            ok("https://adfs.contoso.com/adfs/").ok().as_deref(),
            Some("https://adfs.contoso.com/adfs")
        );
        for loopback in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            let a = Authority::parse(loopback);
            assert!(a.as_ref().is_ok_and(Authority::is_loopback), "{loopback}");
        }
        for bad in [
            "http://login.microsoftonline.com",
            "ftp://x",
            "",
            "https://x/?a=b",
        ] {
            let err = Authority::parse(bad);
            assert!(
                err.as_ref().is_err_and(|e| e.field == "authority_host"),
                "{bad}: {err:?}"
            );
        }
        let tenant = TenantId::parse("t1").ok();
        assert_eq!(
            tenant.map(|t| Authority::public().token_url(&t)).as_deref(),
            Some("https://login.microsoftonline.com/t1/oauth2/v2.0/token")
        );
    }

    #[test]
    fn multi_tenant_aliases_and_odd_characters_are_rejected() {
        for bad in ["common", "Organizations", "consumers", "", "a/b", "t?x=1"] {
            let err = TenantId::parse(bad);
            assert!(err.as_ref().is_err_and(|e| e.field == "tenant_id"), "{bad}");
        }
        let common = TenantId::parse("common").err().map(|e| e.to_string());
        assert!(common.is_some_and(|m| m.contains("AADSTS50059")));
    }

    #[test]
    fn scopes_must_be_one_default_scope() {
        assert!(validate_scope(DEFAULT_SCOPE).is_ok());
        assert!(validate_scope("https://redis.azure.com").is_err());
        assert!(validate_scope("a/.default b/.default").is_err());
    }
}
