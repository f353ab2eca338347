//! Azure Cloud Shell: the signed-in portal user's token
//!
//! `POST {MSI_ENDPOINT}` with `Metadata: true` and the form body `resource=..`. No user-assigned
//! identity can be chosen. Errors come as `{"error": {"code": .., "message": ..}}`. Retry: 408, 429
//! and 5xx. The token is a delegated user token, so its `oid` is the user's object id.

use crate::error::{ConfigError, ResponseError};
use crate::identity::app_service::parse_local;
use crate::identity::authority::DEFAULT_RESOURCE;
use crate::identity::common::{self, Header, RetryRules};
use crate::identity::env::{self, EnvSource};
use crate::identity::managed::ManagedIdentityId;
use crate::token::TokenResponse;

/// The Cloud Shell endpoint MSAL-Py uses when `MSI_ENDPOINT` is unset
pub const DEFAULT_ENDPOINT: &str = "http://localhost:50342/oauth2/token";

/// Cloud Shell token source
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudShell {
    endpoint: String,
    resource: String,
}

impl CloudShell {
    /// Cloud Shell at `endpoint` (`MSI_ENDPOINT`)
    ///
    /// # Errors
    /// A [`ConfigError`] when the endpoint is not an http(s) URL, or `id` is user-assigned
    /// (Cloud Shell has only the signed-in user).
    pub fn new(endpoint: &str, id: &ManagedIdentityId) -> Result<Self, ConfigError> {
        if !id.is_system_assigned() {
            return Err(ConfigError::new(
                "managed_identity",
                "Cloud Shell cannot select a user-assigned identity; it always returns the \
                 signed-in user's token",
            ));
        }
        Ok(Self {
            endpoint: common::endpoint_url(env::MSI_ENDPOINT, endpoint, false)?,
            resource: DEFAULT_RESOURCE.to_owned(),
        })
    }

    /// From `MSI_ENDPOINT`, or the default endpoint
    ///
    /// # Errors
    /// As [`CloudShell::new`].
    pub fn from_env(env: &dyn EnvSource, id: &ManagedIdentityId) -> Result<Self, ConfigError> {
        let endpoint =
            env::var(env, env::MSI_ENDPOINT).unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        Self::new(&endpoint, id)
    }

    /// Asks for another resource than Redis
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// The token request: a form `POST`
    ///
    /// # Errors
    /// A [`ConfigError`] when the URL is invalid.
    pub fn build_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        common::request(
            http::Method::POST,
            &self.endpoint,
            &[
                Header::plain("metadata", "true"),
                Header::plain("content-type", "application/x-www-form-urlencoded"),
            ],
            common::form_body(&[("resource", &self.resource)]),
            env::MSI_ENDPOINT,
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
        parse_local(response, "Cloud Shell", RetryRules::LocalDefault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::imds::tests::{response, MSAL_RETRYABLE};

    #[test]
    fn request_is_a_form_post_with_metadata() {
        let shell = CloudShell::new(
            "http://localhost:50342/oauth2/token",
            &ManagedIdentityId::SystemAssigned,
        );
        let request = shell.and_then(|s| s.build_request());
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(
            request.uri().to_string(),
            "http://localhost:50342/oauth2/token"
        );
        assert_eq!(request.headers()["Metadata"], "true");
        assert_eq!(
            request.headers()["Content-Type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(request.body(), b"resource=https%3A%2F%2Fredis.azure.com");
        assert!(
            CloudShell::new(DEFAULT_ENDPOINT, &ManagedIdentityId::ClientId("c".into())).is_err()
        );
    }

    #[test]
    fn string_expires_in_and_nested_errors_parse() {
        let Ok(shell) = CloudShell::new(DEFAULT_ENDPOINT, &ManagedIdentityId::SystemAssigned)
        else {
            panic!("valid")
        };
        let body = r#"{"access_token":"t","expires_in":"3599","expires_on":"1767143999","token_type":"Bearer","refresh_token":""}"#;
        let token = shell.parse_response(&response(200, body));
        assert_eq!(token.as_ref().ok().and_then(|t| t.expires_in), Some(3599));
        let error = shell.parse_response(&response(
            400,
            r#"{"error":{"code":"BadRequest","message":"resource is required"}}"#,
        ));
        let text = error
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(error.is_err_and(|e| !e.retryable));
        assert!(
            text.contains("BadRequest") && text.contains("resource is required"),
            "{text}"
        );
        assert!(shell
            .parse_response(&response(503, ""))
            .is_err_and(|e| e.retryable));
    }

    #[test]
    fn request_timeout_and_msal_retry_statuses_are_retryable() {
        let Ok(shell) = CloudShell::new(DEFAULT_ENDPOINT, &ManagedIdentityId::SystemAssigned)
        else {
            panic!("valid")
        };
        for status in MSAL_RETRYABLE {
            let error = shell.parse_response(&response(status, ""));
            assert!(error.is_err_and(|e| e.retryable), "{status}");
        }
    }
}
