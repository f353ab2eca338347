//! The Entra ID v2 token endpoint's answers, shared by the client-secret, client-certificate and
//! workload-identity flows
//!
//! Success: `{"token_type", "expires_in", "ext_expires_in", "refresh_in"?, "access_token"}` with
//! numbers that may arrive as strings. Failure: `{"error", "error_description", "error_codes",
//! "timestamp", "trace_id", "correlation_id", "error_uri"}`, surfaced whole in the error.
//! Retryable: 408, 429, 5xx and `temporarily_unavailable`; not: `invalid_client`,
//! `invalid_grant`, `invalid_scope`, `unauthorized_client` and other 4xx. `Retry-After` is read.

use crate::error::{ConfigError, ResponseError};
use crate::identity::authority::{validate_scope, Authority, TenantId, DEFAULT_SCOPE};
use crate::identity::common::{self, Header, RetryRules};
use crate::identity::env::{self, EnvSource};
use crate::token::TokenResponse;

/// The `client_assertion_type` for JWT client assertions
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An app registration (or user-assigned identity) asking Entra for a token: authority, tenant,
/// client id and scope
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntraClient {
    authority: Authority,
    /// Lower-cased region name; the token request then goes to the regional authority
    region: Option<String>,
    tenant: TenantId,
    client_id: String,
    scope: String,
}

impl EntraClient {
    /// A client in `tenant`, public cloud, scope `https://redis.azure.com/.default`
    ///
    /// # Errors
    /// A [`ConfigError`] when the tenant is missing, malformed or `common` / `organizations` /
    /// `consumers`, or the client id is empty.
    pub fn new(tenant: &str, client_id: &str) -> Result<Self, ConfigError> {
        let client_id = client_id.trim();
        if client_id.is_empty() {
            return Err(ConfigError::new(
                "client_id",
                "missing: give the application (client) id; set AZURE_CLIENT_ID",
            ));
        }
        Ok(Self {
            authority: Authority::default(),
            region: None,
            tenant: TenantId::parse(tenant)?,
            client_id: client_id.to_owned(),
            scope: DEFAULT_SCOPE.to_owned(),
        })
    }

    /// From `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_AUTHORITY_HOST` and
    /// `AZURE_REGIONAL_AUTHORITY_NAME`
    ///
    /// `AZURE_REGIONAL_AUTHORITY_NAME` is read as the Azure SDKs for Python and Go read it for
    /// confidential clients: a region name (`westus2`) sends token requests to that region's
    /// Entra endpoint ([`Authority::regional`]); `TryAutoDetect` (any case) takes the region from
    /// `REGION_NAME` (spaces removed, lower-cased, as MSAL does) and uses the global authority
    /// when that is unset. Unlike MSAL, IMDS is never asked for the region.
    ///
    /// # Errors
    /// As [`EntraClient::new`], [`Authority::parse`] and [`EntraClient::with_region`].
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let tenant = env::var(env, env::AZURE_TENANT_ID).unwrap_or_default();
        let client_id = env::var(env, env::AZURE_CLIENT_ID).unwrap_or_default();
        let mut client = Self::new(&tenant, &client_id)?;
        if let Some(host) = env::var(env, env::AZURE_AUTHORITY_HOST) {
            client = client.with_authority(Authority::parse(&host)?);
        }
        let region = match env::var(env, env::AZURE_REGIONAL_AUTHORITY_NAME) {
            Some(value) if value.eq_ignore_ascii_case("tryautodetect") => {
                env::var(env, env::REGION_NAME).map(|r| r.replace(' ', "").to_ascii_lowercase())
            }
            other => other,
        };
        match region.filter(|r| !r.is_empty()) {
            Some(region) => client.with_region(&region),
            None => Ok(client),
        }
    }

    /// Uses another authority (sovereign cloud, Azure Stack, emulator)
    ///
    /// A region set before stays; an authority without a regional form then makes the token
    /// request fail with a [`ConfigError`].
    #[must_use]
    pub fn with_authority(mut self, authority: Authority) -> Self {
        self.authority = authority;
        self
    }

    /// Sends token requests to `region`'s Entra endpoint (ESTS-R), e.g. `westus2`
    ///
    /// Tokens are the same as the global endpoint's; the regional endpoint keeps the traffic
    /// inside the region (MSAL's reason for regional authorities).
    ///
    /// # Errors
    /// As [`Authority::regional`] for the current authority.
    pub fn with_region(mut self, region: &str) -> Result<Self, ConfigError> {
        self.authority.regional(region)?;
        self.region = Some(region.trim().to_ascii_lowercase());
        Ok(self)
    }

    /// The region token requests go to, if one is set
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Asks for another scope than Redis's
    ///
    /// # Errors
    /// A [`ConfigError`] unless the scope is one resource ending in `/.default`.
    pub fn with_scope(mut self, scope: &str) -> Result<Self, ConfigError> {
        validate_scope(scope)?;
        self.scope = scope.to_owned();
        Ok(self)
    }

    /// The authority
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The tenant
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The client id
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The scope
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token` on the global authority: a client assertion's
    /// `aud` (MSAL keeps the global endpoint there even for regional requests), and the URL
    /// posted to unless a region is set ([`EntraClient::request_url`])
    pub fn token_url(&self) -> String {
        self.authority.token_url(&self.tenant)
    }

    /// The URL token requests are posted to: the regional authority's token endpoint when a
    /// region is set, [`EntraClient::token_url`] otherwise
    ///
    /// # Errors
    /// As [`Authority::regional`], when a region is set and the authority has no regional form.
    pub fn request_url(&self) -> Result<String, ConfigError> {
        match &self.region {
            Some(region) => Ok(self.authority.regional(region)?.token_url(&self.tenant)),
            None => Ok(self.token_url()),
        }
    }

    /// A client-credentials `POST`: `client_id`, `grant_type`, `scope` and `credential` fields,
    /// in alphabetical order
    pub(crate) fn form_request(
        &self,
        credential: &[(&str, &str)],
    ) -> Result<crate::identity::IdentityRequest, ConfigError> {
        let mut fields: Vec<(&str, &str)> = vec![
            ("client_id", self.client_id.as_str()),
            ("grant_type", "client_credentials"),
            ("scope", self.scope.as_str()),
        ];
        fields.extend_from_slice(credential);
        fields.sort_by(|a, b| a.0.cmp(b.0));
        common::request(
            http::Method::POST,
            &self.request_url()?,
            &[Header::plain(
                "content-type",
                "application/x-www-form-urlencoded",
            )],
            common::form_body(&fields),
            "authority_host",
        )
    }
}

/// Reads an answer of the Entra token endpoint
///
/// ```
/// use redis_entraid_core::identity::entra::parse_response;
/// let response = http::Response::new(br#"{"token_type":"Bearer","expires_in":4499,"access_token":"eyJ.a.b"}"#.to_vec());
/// let token = parse_response(&response).unwrap();
/// assert_eq!(token.expires_in, Some(4499));
/// ```
///
/// # Errors
/// A [`ResponseError`] with Entra's error body attached and the retry classification above; a
/// 2xx answer without an `access_token` is not retryable.
pub fn parse_response(response: &http::Response<Vec<u8>>) -> Result<TokenResponse, ResponseError> {
    if response.status().is_success() {
        common::token_response(response, "Entra ID")
    } else {
        Err(common::status_error(
            response,
            "Entra ID",
            RetryRules::Entra,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EntraErrorBody;
    use crate::identity::imds::tests::response;
    use std::time::Duration;

    #[test]
    fn numbers_or_strings_and_refresh_in_are_read() {
        let numbers = r#"{"token_type":"Bearer","expires_in":4499,"ext_expires_in":4499,"refresh_in":2249,"access_token":"eyJ.a.b"}"#;
        let token = parse_response(&response(200, numbers));
        let Ok(token) = token else {
            panic!("{token:?}")
        };
        assert_eq!(
            (token.expires_in, token.refresh_in, token.expires_on),
            (Some(4499), Some(2249), None)
        );
        let strings = r#"{"token_type":"Bearer","expires_in":"3599","expires_on":"1767143999","ext_expires_in":"3599","not_before":"1767140099","access_token":"eyJ.a.b"}"#;
        let token = parse_response(&response(200, strings));
        let Ok(token) = token else {
            panic!("{token:?}")
        };
        assert_eq!(
            (token.expires_in, token.expires_on),
            (Some(3599), Some(1_767_143_999))
        );
    }

    #[test]
    fn invalid_client_is_final_and_fully_surfaced() {
        let body = r#"{"error":"invalid_client",
 "error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 0000aaaa\r\nCorrelation ID: aaaa0000\r\nTimestamp: 2026-01-01 00:00:00Z",
 "error_codes":[7000215],"timestamp":"2026-01-01 00:00:00Z",
 "trace_id":"0000aaaa-11bb-cccc-dd33-eeeeee333333","correlation_id":"aaaa0000-bb11-2222-33cc-444444dddddd",
 "error_uri":"https://login.microsoftonline.com/error?code=7000215"}"#;
        for status in [400, 401] {
            let error = parse_response(&response(status, body)).err();
            let Some(error) = error else {
                panic!("must fail")
            };
            assert!(!error.retryable);
            assert_eq!(error.status, Some(status));
            let entra = error.entra.clone().unwrap_or_default();
            assert_eq!(entra.error.as_deref(), Some("invalid_client"));
            assert_eq!(entra.error_codes, vec![7_000_215]);
            assert_eq!(
                entra.correlation_id.as_deref(),
                Some("aaaa0000-bb11-2222-33cc-444444dddddd")
            );
            assert_eq!(
                entra.trace_id.as_deref(),
                Some("0000aaaa-11bb-cccc-dd33-eeeeee333333")
            );
            let text = error.to_string();
            assert!(
                text.contains("check the client id, secret or certificate"),
                "{text}"
            );
        }
    }

    #[test]
    fn every_oauth_error_code_is_classified() {
        for (code, retryable) in [
            ("invalid_request", false),
            ("invalid_client", false),
            ("unauthorized_client", false),
            ("invalid_grant", false),
            ("invalid_scope", false),
            ("invalid_resource", false),
            ("unsupported_grant_type", false),
            ("interaction_required", false),
            ("temporarily_unavailable", true),
        ] {
            let body = format!(r#"{{"error":"{code}","error_codes":[1]}}"#);
            let error = parse_response(&response(400, &body)).err();
            assert_eq!(error.map(|e| e.retryable), Some(retryable), "{code}");
        }
    }

    #[test]
    fn throttling_and_server_errors_are_retryable_with_retry_after() {
        let mut throttled = response(429, r#"{"error":"invalid_request","error_codes":[50196]}"#);
        throttled
            .headers_mut()
            .insert("Retry-After", http::HeaderValue::from_static("30"));
        let error = parse_response(&throttled).err();
        assert!(error
            .as_ref()
            .is_some_and(|e| e.retryable && e.retry_after == Some(Duration::from_secs(30))));
        for status in [500, 502, 503, 504] {
            assert!(parse_response(&response(status, "<html>")).is_err_and(|e| e.retryable));
        }
        let no_body = parse_response(&response(503, "")).err();
        assert_eq!(no_body.and_then(|e| e.entra), None::<Box<EntraErrorBody>>);
    }

    fn env_client(vars: &[(&'static str, &'static str)]) -> Result<EntraClient, ConfigError> {
        let mut map: std::collections::BTreeMap<&str, &str> = vars.iter().copied().collect();
        map.insert(env::AZURE_TENANT_ID, "t1");
        map.insert(env::AZURE_CLIENT_ID, "c1");
        EntraClient::from_env(&map)
    }

    fn posted(client: &EntraClient) -> String {
        match client.form_request(&[]) {
            Ok(request) => request.uri().to_string(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn regional_authority_name_sends_public_cloud_requests_to_the_regional_host() {
        let client = env_client(&[(env::AZURE_REGIONAL_AUTHORITY_NAME, "WestUS2")]);
        let Ok(client) = client else {
            panic!("{client:?}")
        };
        assert_eq!(client.region(), Some("westus2"));
        assert_eq!(
            posted(&client),
            "https://westus2.login.microsoft.com/t1/oauth2/v2.0/token"
        );
        // the client assertion's audience stays the global endpoint, as in MSAL
        assert_eq!(
            client.token_url(),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
        for alias in [
            "login.microsoft.com",
            "https://login.windows.net/",
            "sts.windows.net",
        ] {
            let client = env_client(&[
                (env::AZURE_AUTHORITY_HOST, alias),
                (env::AZURE_REGIONAL_AUTHORITY_NAME, "eastus"),
            ]);
            assert!(
                client.is_ok_and(
                    |c| posted(&c) == "https://eastus.login.microsoft.com/t1/oauth2/v2.0/token"
                ),
                "{alias}"
            );
        }
        let unset = env_client(&[(env::AZURE_REGIONAL_AUTHORITY_NAME, " ")]);
        assert!(unset.is_ok_and(|c| c.region().is_none()
            && posted(&c) == "https://login.microsoftonline.com/t1/oauth2/v2.0/token"));
    }

    #[test]
    fn regional_authority_in_other_clouds_follows_msal_region_dot_host() {
        for (host, expected) in [
            (
                Authority::US_GOVERNMENT,
                "https://usgovvirginia.login.microsoftonline.us/t1/oauth2/v2.0/token",
            ),
            (
                "login.chinacloudapi.cn:8443",
                "https://usgovvirginia.login.chinacloudapi.cn:8443/t1/oauth2/v2.0/token",
            ),
        ] {
            let client = env_client(&[
                (env::AZURE_AUTHORITY_HOST, host),
                (env::AZURE_REGIONAL_AUTHORITY_NAME, "usgovvirginia"),
            ]);
            assert!(client.is_ok_and(|c| posted(&c) == expected), "{host}");
        }
    }

    #[test]
    fn try_auto_detect_reads_region_name_and_otherwise_uses_the_global_authority() {
        let detected = env_client(&[
            (env::AZURE_REGIONAL_AUTHORITY_NAME, "TryAutoDetect"),
            (env::REGION_NAME, "West US 2"),
        ]);
        assert!(detected.is_ok_and(
            |c| posted(&c) == "https://westus2.login.microsoft.com/t1/oauth2/v2.0/token"
        ));
        let nothing = env_client(&[(env::AZURE_REGIONAL_AUTHORITY_NAME, "tryautodetect")]);
        assert!(nothing.is_ok_and(|c| c.region().is_none()
            && posted(&c) == "https://login.microsoftonline.com/t1/oauth2/v2.0/token"));
    }

    #[test]
    fn bad_regions_and_authorities_without_a_regional_form_are_refused_clearly() {
        for region in ["west us", "a.b", "-x", "x/y", "é"] {
            let client = env_client(&[(env::AZURE_REGIONAL_AUTHORITY_NAME, region)]);
            assert!(
                client
                    .is_err_and(|e| e.field == "region"
                        && e.to_string().contains("not an Azure region name")),
                "{region}"
            );
        }
        for host in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "https://10.0.0.1",
            "https://adfs.contoso.com/adfs",
        ] {
            let client = env_client(&[
                (env::AZURE_AUTHORITY_HOST, host),
                (env::AZURE_REGIONAL_AUTHORITY_NAME, "westus2"),
            ]);
            assert!(
                client
                    .is_err_and(|e| e.field == "region"
                        && e.to_string().contains("has no regional endpoint")),
                "{host}"
            );
        }
        // a region set before an emulator authority fails at the request, not with a panic
        let late = EntraClient::new("t1", "c1")
            .and_then(|c| c.with_region("westus2"))
            .map(|c| c.with_authority(Authority::parse("http://127.0.0.1:1").unwrap_or_default()));
        assert!(late.is_ok_and(|c| c.form_request(&[]).is_err()));
    }
}
