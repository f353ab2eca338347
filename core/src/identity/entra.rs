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
            tenant: TenantId::parse(tenant)?,
            client_id: client_id.to_owned(),
            scope: DEFAULT_SCOPE.to_owned(),
        })
    }

    /// From `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_AUTHORITY_HOST`
    ///
    /// # Errors
    /// As [`EntraClient::new`] and [`Authority::parse`].
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let tenant = env::var(env, env::AZURE_TENANT_ID).unwrap_or_default();
        let client_id = env::var(env, env::AZURE_CLIENT_ID).unwrap_or_default();
        let client = Self::new(&tenant, &client_id)?;
        match env::var(env, env::AZURE_AUTHORITY_HOST) {
            Some(host) => Ok(client.with_authority(Authority::parse(&host)?)),
            None => Ok(client),
        }
    }

    /// Uses another authority (sovereign cloud, Azure Stack, emulator)
    #[must_use]
    pub fn with_authority(mut self, authority: Authority) -> Self {
        self.authority = authority;
        self
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

    /// `{authority}/{tenant}/oauth2/v2.0/token`: the URL posted to, and a client assertion's `aud`
    pub fn token_url(&self) -> String {
        self.authority.token_url(&self.tenant)
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
            &self.token_url(),
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
}
