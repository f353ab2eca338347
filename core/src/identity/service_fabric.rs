//! Managed identity in Service Fabric applications
//!
//! `GET {IDENTITY_ENDPOINT}?api-version=2019-07-01-preview&resource=..` over **https** with header
//! `Secret: {IDENTITY_HEADER}`. The endpoint's certificate is self-signed: the runtime must pin
//! it, accepting only a server certificate whose SHA-1 thumbprint (of the leaf DER) equals
//! `IDENTITY_SERVER_THUMBPRINT` ([`ServiceFabric::server_thumbprint`]), and must not follow
//! redirects. The identity is fixed by the application manifest, so none can be selected.
//! Errors: `{"error": {"correlationId", "code", "message"}}`. Retry: 408, 429 and 5xx; 404 means the
//! application has no identity and is not retried.

use crate::error::{ConfigError, ResponseError};
use crate::identity::app_service::parse_local;
use crate::identity::authority::DEFAULT_RESOURCE;
use crate::identity::common::{self, Header, RetryRules};
use crate::identity::env::{self, EnvSource};
use crate::identity::managed::ManagedIdentityId;
use crate::secret::SecretString;
use crate::token::TokenResponse;

/// The only api-version Service Fabric accepts
pub const API_VERSION: &str = "2019-07-01-preview";

/// Service Fabric managed identity
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFabric {
    endpoint: String,
    secret: SecretString,
    thumbprint: String,
    api_version: String,
    resource: String,
}

impl ServiceFabric {
    /// From the endpoint, the secret and the server certificate thumbprint
    ///
    /// The thumbprint may contain spaces or colons and any case; it is kept as 40 uppercase hex
    /// digits.
    ///
    /// # Errors
    /// A [`ConfigError`] when the endpoint is not https, the secret is empty, the thumbprint is
    /// not 40 hex digits, or `id` is user-assigned.
    pub fn new(
        endpoint: &str,
        secret: SecretString,
        thumbprint: &str,
        id: &ManagedIdentityId,
    ) -> Result<Self, ConfigError> {
        if !id.is_system_assigned() {
            return Err(ConfigError::new(
                "managed_identity",
                "Service Fabric fixes the identity in the application manifest; it cannot be \
                 selected at run time",
            ));
        }
        if secret.is_empty() {
            return Err(ConfigError::new(env::IDENTITY_HEADER, "empty"));
        }
        let hex: String = thumbprint
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect::<String>()
            .to_ascii_uppercase();
        if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ConfigError::new(
                env::IDENTITY_SERVER_THUMBPRINT,
                "must be the 40 hex digits of a SHA-1 certificate thumbprint",
            ));
        }
        Ok(Self {
            endpoint: common::endpoint_url(env::IDENTITY_ENDPOINT, endpoint, true)?,
            secret,
            thumbprint: hex,
            api_version: API_VERSION.to_owned(),
            resource: DEFAULT_RESOURCE.to_owned(),
        })
    }

    /// From `IDENTITY_ENDPOINT`, `IDENTITY_HEADER`, `IDENTITY_SERVER_THUMBPRINT` and, if set,
    /// `IDENTITY_API_VERSION`
    ///
    /// # Errors
    /// As [`ServiceFabric::new`], or when a variable is missing.
    pub fn from_env(env: &dyn EnvSource, id: &ManagedIdentityId) -> Result<Self, ConfigError> {
        let get = |name: &'static str| {
            env::var(env, name).ok_or_else(|| ConfigError::new(name, "not set"))
        };
        let mut fabric = Self::new(
            &get(env::IDENTITY_ENDPOINT)?,
            SecretString::new(get(env::IDENTITY_HEADER)?),
            &get(env::IDENTITY_SERVER_THUMBPRINT)?,
            id,
        )?;
        if let Some(version) = env::var(env, env::IDENTITY_API_VERSION) {
            fabric.api_version = version;
        }
        Ok(fabric)
    }

    /// Asks for another resource than Redis
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// The SHA-1 thumbprint (40 uppercase hex digits) the server certificate must have
    pub fn server_thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The token request
    ///
    /// # Errors
    /// A [`ConfigError`] when the secret holds control characters or the URL is invalid.
    pub fn build_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        common::request(
            http::Method::GET,
            &common::with_query(
                &self.endpoint,
                &[
                    ("api-version", &self.api_version),
                    ("resource", &self.resource),
                ],
            ),
            &[Header::secret("secret", self.secret.expose_secret())],
            Vec::new(),
            env::IDENTITY_ENDPOINT,
        )
    }

    /// Reads the answer (`expires_on` as number or string)
    ///
    /// # Errors
    /// A [`ResponseError`]; 408, 429 and 5xx are retryable, 404 and other 4xx are not.
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        parse_local(
            response,
            "Service Fabric managed identity",
            RetryRules::ServiceFabric,
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
        map.insert(
            env::IDENTITY_ENDPOINT,
            "https://localhost:2377/metadata/identity/oauth2/token",
        );
        map.insert(env::IDENTITY_HEADER, "sf-secret-value");
        map.insert(
            env::IDENTITY_SERVER_THUMBPRINT,
            "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01",
        );
        map
    }

    #[test]
    fn request_is_exact_and_thumbprint_is_normalised() {
        let fabric = ServiceFabric::from_env(&env_map(), &ManagedIdentityId::SystemAssigned);
        let Ok(fabric) = fabric else {
            panic!("{fabric:?}")
        };
        assert_eq!(
            fabric.server_thumbprint(),
            "ABCDEF0123456789ABCDEF0123456789ABCDEF01"
        );
        let request = fabric.build_request();
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(
            request.uri().to_string(),
            "https://localhost:2377/metadata/identity/oauth2/token?api-version=2019-07-01-preview&resource=https%3A%2F%2Fredis.azure.com"
        );
        assert_eq!(request.headers()["Secret"], "sf-secret-value");
        assert!(!format!("{fabric:?}").contains("sf-secret-value"));
    }

    #[test]
    fn plain_http_bad_thumbprint_and_user_assigned_are_rejected() {
        let mut map = env_map();
        map.insert(env::IDENTITY_ENDPOINT, "http://localhost:2377/");
        assert!(ServiceFabric::from_env(&map, &ManagedIdentityId::SystemAssigned).is_err());
        let mut map = env_map();
        map.insert(env::IDENTITY_SERVER_THUMBPRINT, "abc");
        assert!(ServiceFabric::from_env(&map, &ManagedIdentityId::SystemAssigned).is_err());
        assert!(
            ServiceFabric::from_env(&env_map(), &ManagedIdentityId::ClientId("c".into())).is_err()
        );
    }

    #[test]
    fn numeric_or_string_expiry_and_error_table() {
        let Ok(fabric) = ServiceFabric::from_env(&env_map(), &ManagedIdentityId::SystemAssigned)
        else {
            panic!("valid")
        };
        for expires in ["1767143999", "\"1767143999\""] {
            let body = format!(
                r#"{{"token_type":"Bearer","access_token":"t","expires_on":{expires},"resource":"https://redis.azure.com"}}"#
            );
            let token = fabric.parse_response(&response(200, &body));
            assert_eq!(token.ok().and_then(|t| t.expires_on), Some(1_767_143_999));
        }
        let body = r#"{"error":{"correlationId":"c-1","code":"SecretHeaderNotFound","message":"Secret is not found in the request headers."}}"#;
        let error = fabric.parse_response(&response(401, body));
        let text = error
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            text.contains("SecretHeaderNotFound") && text.contains("c-1"),
            "{text}"
        );
        assert!(error.is_err_and(|e| !e.retryable));
        let not_found = r#"{"error":{"code":"ManagedIdentityNotFound","message":"no identity"}}"#;
        assert!(fabric
            .parse_response(&response(404, not_found))
            .is_err_and(|e| !e.retryable));
        assert!(fabric
            .parse_response(&response(429, ""))
            .is_err_and(|e| e.retryable));
        assert!(fabric
            .parse_response(&response(500, ""))
            .is_err_and(|e| e.retryable));
    }

    #[test]
    fn request_timeout_and_msal_retry_statuses_are_retryable() {
        let fabric = ServiceFabric::from_env(&env_map(), &ManagedIdentityId::SystemAssigned);
        let Ok(fabric) = fabric else {
            panic!("{fabric:?}")
        };
        for status in MSAL_RETRYABLE {
            let error = fabric.parse_response(&response(status, ""));
            assert!(error.is_err_and(|e| e.retryable), "{status}");
        }
        let timeout = fabric.parse_response(&response(408, ""));
        assert!(timeout.is_err_and(|e| e.message.contains("timed out")));
    }
}
