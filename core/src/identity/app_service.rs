//! Managed identity on App Service, Azure Functions and Azure Automation
//!
//! Current protocol ([`AppService`], api-version 2019-08-01): `GET {IDENTITY_ENDPOINT}` with
//! `X-IDENTITY-HEADER: {IDENTITY_HEADER}`; user-assigned by `client_id`, `object_id` or
//! `mi_res_id` (not IMDS's `msi_res_id`). The answer has `expires_on` (epoch seconds as a string)
//! and no `expires_in`.
//!
//! Legacy protocol ([`AppServiceLegacy`], api-version 2017-09-01): `GET {MSI_ENDPOINT}` with
//! `secret: {MSI_SECRET}`; user-assigned by client id only, spelled `clientid`; `expires_on` is a
//! date string such as `06/20/2019 02:57:58 +00:00` or `1/16/2020 5:24:12 AM +00:00`.
//!
//! Retry rules (azure-protocols §11): 408, 429 and 5xx are retryable; 400 and other 4xx are not.

use crate::error::{ConfigError, ResponseError};
use crate::identity::authority::DEFAULT_RESOURCE;
use crate::identity::common::{self, Header, RetryRules};
use crate::identity::env::{self, EnvSource};
use crate::identity::managed::ManagedIdentityId;
use crate::secret::SecretString;
use crate::token::TokenResponse;

/// The current App Service api-version
pub const API_VERSION: &str = "2019-08-01";
/// The legacy api-version (also spoken by Azure ML)
pub const LEGACY_API_VERSION: &str = "2017-09-01";

/// App Service / Functions managed identity (api-version 2019-08-01)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppService {
    endpoint: String,
    identity_header: SecretString,
    resource: String,
    id: ManagedIdentityId,
}

impl AppService {
    /// From the endpoint and header value the platform provides
    ///
    /// # Errors
    /// A [`ConfigError`] when the endpoint is not an http(s) URL, the header is empty or the
    /// identity id is blank.
    pub fn new(
        endpoint: &str,
        identity_header: SecretString,
        id: ManagedIdentityId,
    ) -> Result<Self, ConfigError> {
        id.validate()?;
        if identity_header.is_empty() {
            return Err(ConfigError::new(
                env::IDENTITY_HEADER,
                "empty: App Service sets it for apps with a managed identity",
            ));
        }
        Ok(Self {
            endpoint: common::endpoint_url(env::IDENTITY_ENDPOINT, endpoint, false)?,
            identity_header,
            resource: DEFAULT_RESOURCE.to_owned(),
            id,
        })
    }

    /// From `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`
    ///
    /// # Errors
    /// A [`ConfigError`] when either variable is missing or invalid.
    pub fn from_env(env: &dyn EnvSource, id: ManagedIdentityId) -> Result<Self, ConfigError> {
        let endpoint = env::var(env, env::IDENTITY_ENDPOINT)
            .ok_or_else(|| ConfigError::new(env::IDENTITY_ENDPOINT, "not set"))?;
        let header = env::var(env, env::IDENTITY_HEADER)
            .ok_or_else(|| ConfigError::new(env::IDENTITY_HEADER, "not set"))?;
        Self::new(&endpoint, SecretString::new(header), id)
    }

    /// Asks for another resource than Redis
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// The endpoint
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The token request
    ///
    /// Sends `Metadata: true` too, as MSAL does: App Service ignores it, Azure Automation needs it.
    ///
    /// # Errors
    /// A [`ConfigError`] when the header value holds control characters or the URL is invalid.
    pub fn build_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        let mut query = vec![
            ("api-version", API_VERSION),
            ("resource", self.resource.as_str()),
        ];
        query.extend(self.id.query_pair("mi_res_id"));
        common::request(
            http::Method::GET,
            &common::with_query(&self.endpoint, &query),
            &[
                Header::secret("x-identity-header", self.identity_header.expose_secret()),
                Header::plain("metadata", "true"),
            ],
            Vec::new(),
            env::IDENTITY_ENDPOINT,
        )
    }

    /// Reads the answer
    ///
    /// # Errors
    /// A [`ResponseError`] classified by the App Service retry rules.
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        parse_local(
            response,
            "App Service managed identity",
            RetryRules::AppService,
        )
    }
}

/// Legacy App Service managed identity (api-version 2017-09-01, `MSI_ENDPOINT` + `MSI_SECRET`)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppServiceLegacy {
    endpoint: String,
    secret: SecretString,
    resource: String,
    client_id: Option<String>,
}

impl AppServiceLegacy {
    /// From `MSI_ENDPOINT`'s and `MSI_SECRET`'s values
    ///
    /// # Errors
    /// A [`ConfigError`] when the endpoint is not an http(s) URL, the secret is empty, or the
    /// identity is selected by object or resource id (this protocol knows only `clientid`).
    pub fn new(
        endpoint: &str,
        secret: SecretString,
        id: ManagedIdentityId,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            endpoint: common::endpoint_url(env::MSI_ENDPOINT, endpoint, false)?,
            secret: non_empty_secret(secret)?,
            resource: DEFAULT_RESOURCE.to_owned(),
            client_id: client_id_only(&id, "the legacy App Service protocol (2017-09-01)")?,
        })
    }

    /// Asks for another resource than Redis
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// The token request: `GET {MSI_ENDPOINT}?api-version=2017-09-01&resource=..[&clientid=..]`
    /// with header `secret`
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

    /// Reads the answer (date-string `expires_on` accepted)
    ///
    /// # Errors
    /// A [`ResponseError`] classified by the App Service retry rules.
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        parse_local(
            response,
            "App Service managed identity (2017-09-01)",
            RetryRules::AppService,
        )
    }
}

pub(crate) fn non_empty_secret(secret: SecretString) -> Result<SecretString, ConfigError> {
    if secret.is_empty() {
        Err(ConfigError::new(
            env::MSI_SECRET,
            "empty: the platform sets it together with MSI_ENDPOINT",
        ))
    } else {
        Ok(secret)
    }
}

pub(crate) fn client_id_only(
    id: &ManagedIdentityId,
    protocol: &str,
) -> Result<Option<String>, ConfigError> {
    id.validate()?;
    match id {
        ManagedIdentityId::SystemAssigned => Ok(None),
        ManagedIdentityId::ClientId(client_id) => Ok(Some(client_id.clone())),
        _ => Err(ConfigError::new(
            "managed_identity",
            format!("{protocol} selects a user-assigned identity by client id only"),
        )),
    }
}

pub(crate) fn legacy_request(
    endpoint: &str,
    secret: &SecretString,
    resource: &str,
    client_id: Option<&str>,
) -> Result<crate::identity::IdentityRequest, ConfigError> {
    let mut query = vec![("api-version", LEGACY_API_VERSION), ("resource", resource)];
    if let Some(client_id) = client_id {
        query.push(("clientid", client_id));
    }
    common::request(
        http::Method::GET,
        &common::with_query(endpoint, &query),
        &[Header::secret("secret", secret.expose_secret())],
        Vec::new(),
        env::MSI_ENDPOINT,
    )
}

pub(crate) fn parse_local(
    response: &http::Response<Vec<u8>>,
    source: &str,
    rules: RetryRules,
) -> Result<TokenResponse, ResponseError> {
    if response.status().is_success() {
        common::token_response(response, source)
    } else {
        Err(common::status_error(response, source, rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::imds::tests::{response, MSAL_RETRYABLE};
    use std::collections::BTreeMap;

    const HEADER: &str = "0d8d6a3b-5c4e-4f1a-9b2c-7e6f5a4b3c2d";

    fn app(id: ManagedIdentityId) -> AppService {
        match AppService::new(
            "http://localhost:8081/msi/token",
            SecretString::new(HEADER),
            id,
        ) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn current_request_is_exact() {
        let request = app(ManagedIdentityId::ClientId(
            "11111111-2222-3333-4444-555555555555".into(),
        ))
        .build_request();
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(
            request.uri().to_string(),
            "http://localhost:8081/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fredis.azure.com&client_id=11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(request.headers()["X-IDENTITY-HEADER"], HEADER);
        assert_eq!(request.headers()["Metadata"], "true");
        assert_eq!(request.headers().len(), 2);
        assert!(request.body().is_empty());
    }

    #[test]
    fn resource_id_uses_the_app_service_spelling_and_existing_query_is_kept() {
        let request = app(ManagedIdentityId::ResourceId("/sub/x".into())).build_request();
        let uri = request.map(|r| r.uri().to_string()).unwrap_or_default();
        assert!(uri.ends_with("&mi_res_id=%2Fsub%2Fx"), "{uri}");
        assert!(!uri.contains("msi_res_id"), "{uri}");
        let with_query = AppService::new(
            "http://127.0.0.1:41741/MSI/token/?code=abc",
            SecretString::new(HEADER),
            ManagedIdentityId::ObjectId("o".into()),
        )
        .and_then(|a| a.build_request());
        let uri = with_query.map(|r| r.uri().to_string()).unwrap_or_default();
        assert_eq!(
            uri,
            "http://127.0.0.1:41741/MSI/token/?code=abc&api-version=2019-08-01&resource=https%3A%2F%2Fredis.azure.com&object_id=o"
        );
    }

    #[test]
    fn from_env_reads_both_variables_and_debug_hides_the_header() {
        let mut map = BTreeMap::new();
        map.insert(env::IDENTITY_ENDPOINT, "http://localhost:8081/msi/token");
        map.insert(env::IDENTITY_HEADER, HEADER);
        let app = AppService::from_env(&map, ManagedIdentityId::SystemAssigned);
        let printed = format!("{app:?}");
        assert!(app.is_ok());
        assert!(!printed.contains(HEADER), "{printed}");
        let request = app.and_then(|a| a.build_request());
        assert!(!format!("{request:?}").contains(HEADER));
        map.remove(env::IDENTITY_HEADER);
        assert!(AppService::from_env(&map, ManagedIdentityId::SystemAssigned).is_err());
    }

    #[test]
    fn only_expires_on_as_string_parses() {
        let body = r#"{"access_token":"eyJ0eXAi.a.b","expires_on":"1767143999","resource":"https://redis.azure.com",
            "token_type":"Bearer","client_id":"11111111-2222-3333-4444-555555555555"}"#;
        let token = app(ManagedIdentityId::SystemAssigned).parse_response(&response(200, body));
        let Ok(token) = token else {
            panic!("{token:?}")
        };
        assert_eq!(token.expires_on, Some(1_767_143_999));
        assert_eq!(token.expires_in, None);
    }

    #[test]
    fn errors_follow_the_app_service_table() {
        let app = app(ManagedIdentityId::SystemAssigned);
        let body = r#"{"statusCode":400,"message":"Unable to load the proper Managed Identity.","correlationId":"7f2d"}"#;
        let error = app.parse_response(&response(400, body)).err();
        let Some(error) = error else {
            panic!("400 must fail")
        };
        assert!(!error.retryable);
        let text = error.to_string();
        assert!(
            text.contains("Unable to load the proper Managed Identity") && text.contains("7f2d"),
            "{text}"
        );
        for status in [408, 429, 500, 503] {
            let error = app.parse_response(&response(status, "")).err();
            assert!(error.is_some_and(|e| e.retryable), "{status}");
        }
        let error = app.parse_response(&response(404, "")).err();
        assert!(error.is_some_and(|e| !e.retryable));
    }

    #[test]
    fn legacy_request_uses_secret_header_and_clientid() {
        let legacy = AppServiceLegacy::new(
            "http://127.0.0.1:41741/MSI/token/",
            SecretString::new("legacy-secret"),
            ManagedIdentityId::ClientId("c1".into()),
        )
        .and_then(|l| l.build_request());
        let Ok(request) = legacy else {
            panic!("{legacy:?}")
        };
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:41741/MSI/token/?api-version=2017-09-01&resource=https%3A%2F%2Fredis.azure.com&clientid=c1"
        );
        assert_eq!(request.headers()["secret"], "legacy-secret");
        assert_eq!(request.headers().len(), 1);
        let by_object = AppServiceLegacy::new(
            "http://127.0.0.1:1/",
            SecretString::new("s"),
            ManagedIdentityId::ObjectId("o".into()),
        );
        assert!(by_object.is_err_and(|e| e.problem.contains("client id only")));
    }

    #[test]
    fn legacy_date_string_expiry_parses_in_both_os_forms() {
        let Ok(legacy) = AppServiceLegacy::new(
            "http://127.0.0.1:1/",
            SecretString::new("s"),
            ManagedIdentityId::SystemAssigned,
        ) else {
            panic!("valid config")
        };
        for (text, unix) in [
            ("06/20/2019 02:57:58 +00:00", 1_560_999_478),
            ("1/16/2020 5:24:12 AM +00:00", 1_579_152_252),
        ] {
            let body =
                format!(r#"{{"access_token":"t","expires_on":"{text}","token_type":"Bearer"}}"#);
            let token = legacy.parse_response(&response(200, &body));
            assert_eq!(token.ok().and_then(|t| t.expires_on), Some(unix), "{text}");
        }
    }

    #[test]
    fn request_timeout_and_msal_retry_statuses_are_retryable_current_and_legacy() {
        let current = app(ManagedIdentityId::SystemAssigned);
        let Ok(legacy) = AppServiceLegacy::new(
            "http://127.0.0.1:1/",
            SecretString::new("s"),
            ManagedIdentityId::SystemAssigned,
        ) else {
            panic!("valid config")
        };
        for status in MSAL_RETRYABLE {
            let error = current.parse_response(&response(status, ""));
            assert!(error.is_err_and(|e| e.retryable), "current {status}");
            let error = legacy.parse_response(&response(status, ""));
            assert!(error.is_err_and(|e| e.retryable), "legacy {status}");
        }
    }
}
