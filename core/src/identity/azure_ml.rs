//! Managed identity on Azure Machine Learning compute
//!
//! `GET {MSI_ENDPOINT}?api-version=2017-09-01&resource=..&clientid=..` with header
//! `secret: {MSI_SECRET}`. The identity is chosen by client id only, spelled `clientid`, and
//! defaults to `DEFAULT_IDENTITY_CLIENT_ID`. `expires_on` is an integer (the date-string forms
//! of the legacy App Service protocol are accepted too). Retry: 408, 429 and 5xx.

use crate::error::{ConfigError, ResponseError};
use crate::identity::app_service::{client_id_only, legacy_request, non_empty_secret, parse_local};
use crate::identity::authority::DEFAULT_RESOURCE;
use crate::identity::common::{self, RetryRules};
use crate::identity::env::{self, EnvSource};
use crate::identity::managed::ManagedIdentityId;
use crate::secret::SecretString;
use crate::token::TokenResponse;

/// Azure ML managed identity
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureMl {
    endpoint: String,
    secret: SecretString,
    resource: String,
    client_id: Option<String>,
}

impl AzureMl {
    /// From `MSI_ENDPOINT`'s and `MSI_SECRET`'s values; `default_client_id` is
    /// `DEFAULT_IDENTITY_CLIENT_ID`, used when `id` is system-assigned
    ///
    /// # Errors
    /// A [`ConfigError`] when the endpoint is not an http(s) URL, the secret is empty, or the
    /// identity is selected by object or resource id.
    pub fn new(
        endpoint: &str,
        secret: SecretString,
        id: ManagedIdentityId,
        default_client_id: Option<String>,
    ) -> Result<Self, ConfigError> {
        let client_id = client_id_only(&id, "Azure ML")?.or(default_client_id);
        Ok(Self {
            endpoint: common::endpoint_url(env::MSI_ENDPOINT, endpoint, false)?,
            secret: non_empty_secret(secret)?,
            resource: DEFAULT_RESOURCE.to_owned(),
            client_id,
        })
    }

    /// From `MSI_ENDPOINT`, `MSI_SECRET` and `DEFAULT_IDENTITY_CLIENT_ID`
    ///
    /// # Errors
    /// As [`AzureMl::new`], or when a variable is missing.
    pub fn from_env(env: &dyn EnvSource, id: ManagedIdentityId) -> Result<Self, ConfigError> {
        let endpoint = env::var(env, env::MSI_ENDPOINT)
            .ok_or_else(|| ConfigError::new(env::MSI_ENDPOINT, "not set"))?;
        let secret = env::var(env, env::MSI_SECRET)
            .ok_or_else(|| ConfigError::new(env::MSI_SECRET, "not set"))?;
        Self::new(
            &endpoint,
            SecretString::new(secret),
            id,
            env::var(env, env::DEFAULT_IDENTITY_CLIENT_ID),
        )
    }

    /// Asks for another resource than Redis
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// The token request
    ///
    /// # Errors
    /// A [`ConfigError`] when the secret holds control characters or the URL is invalid.
    pub fn build_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        legacy_request(
            &self.endpoint,
            &self.secret,
            &self.resource,
            self.client_id.as_deref(),
        )
    }

    /// Reads the answer
    ///
    /// # Errors
    /// A [`ResponseError`]; 408, 429 and 5xx are retryable.
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        parse_local(
            response,
            "Azure ML managed identity",
            RetryRules::LocalDefault,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::imds::tests::{response, MSAL_RETRYABLE};
    use std::collections::BTreeMap;

    fn env_map() -> BTreeMap<&'static str, &'static str> {
        let mut map = BTreeMap::new();
        map.insert(env::MSI_ENDPOINT, "http://127.0.0.1:46808/MSI/auth");
        map.insert(env::MSI_SECRET, "ml-secret-value");
        map.insert(env::DEFAULT_IDENTITY_CLIENT_ID, "default-cid");
        map
    }

    #[test]
    fn request_uses_clientid_spelling_secret_header_and_default_client_id() {
        let ml = AzureMl::from_env(&env_map(), ManagedIdentityId::SystemAssigned);
        let request = ml.as_ref().map(|m| m.build_request());
        let Ok(Ok(request)) = request else {
            panic!("{request:?}")
        };
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:46808/MSI/auth?api-version=2017-09-01&resource=https%3A%2F%2Fredis.azure.com&clientid=default-cid"
        );
        assert_eq!(request.headers()["secret"], "ml-secret-value");
        assert!(!format!("{ml:?}").contains("ml-secret-value"));
        let chosen = AzureMl::from_env(&env_map(), ManagedIdentityId::ClientId("c2".into()))
            .and_then(|m| m.build_request());
        assert!(chosen.is_ok_and(|r| r.uri().to_string().ends_with("&clientid=c2")));
        let by_resource = AzureMl::from_env(&env_map(), ManagedIdentityId::ResourceId("/r".into()));
        assert!(by_resource.is_err());
    }

    #[test]
    fn integer_expires_on_parses_and_errors_are_classified() {
        let Ok(ml) = AzureMl::from_env(&env_map(), ManagedIdentityId::SystemAssigned) else {
            panic!("valid")
        };
        let body = r#"{"access_token":"t","expires_on":1767143999,"resource":"https://redis.azure.com","token_type":"Bearer"}"#;
        let token = ml.parse_response(&response(200, body));
        assert_eq!(token.ok().and_then(|t| t.expires_on), Some(1_767_143_999));
        assert!(ml
            .parse_response(&response(429, ""))
            .is_err_and(|e| e.retryable));
        assert!(ml
            .parse_response(&response(502, ""))
            .is_err_and(|e| e.retryable));
        assert!(ml
            .parse_response(&response(400, ""))
            .is_err_and(|e| !e.retryable));
        assert!(ml
            .parse_response(&response(404, ""))
            .is_err_and(|e| !e.retryable));
    }

    #[test]
    fn request_timeout_and_msal_retry_statuses_are_retryable() {
        let Ok(ml) = AzureMl::from_env(&env_map(), ManagedIdentityId::SystemAssigned) else {
            panic!("valid")
        };
        for status in MSAL_RETRYABLE {
            let error = ml.parse_response(&response(status, ""));
            assert!(error.is_err_and(|e| e.retryable), "{status}");
        }
    }
}
