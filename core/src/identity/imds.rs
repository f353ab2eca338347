//! Managed identity on Azure VMs, VM scale sets and AKS nodes: the Instance Metadata Service
//!
//! `GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=..`
//! with `Metadata: true`; a user-assigned identity is chosen with exactly one of `client_id`,
//! `object_id`, `msi_res_id`. `AZURE_POD_IDENTITY_AUTHORITY_HOST` replaces the host. Every field of
//! the answer is a JSON string. Retry rules (azure-protocols §1.3, §11): 404, 408, 410, 429 and
//! 5xx are retryable; 400 (no such identity) and a 403 that says "unreachable" (a proxy such as
//! Docker Desktop answering for IMDS) are not. Requests must bypass any HTTP proxy.

use std::time::Duration;

use crate::error::{ConfigError, ResponseError};
use crate::identity::authority::DEFAULT_RESOURCE;
use crate::identity::common::{self, Header, RetryRules};
use crate::identity::env::{self, EnvSource};
use crate::identity::managed::ManagedIdentityId;
use crate::token::TokenResponse;

/// The IMDS token URL
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// The api-version every MSAL sends
pub const API_VERSION: &str = "2018-02-01";
/// Timeout for the first request of a credential chain: a missing IMDS must fail fast
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout for a normal IMDS request
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An IMDS token request configuration
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imds {
    endpoint: String,
    resource: String,
    id: ManagedIdentityId,
}

impl Imds {
    /// IMDS at its default address, for `id`, for the Redis resource
    pub fn new(id: ManagedIdentityId) -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            resource: DEFAULT_RESOURCE.to_owned(),
            id,
        }
    }

    /// IMDS as the environment describes it (`AZURE_POD_IDENTITY_AUTHORITY_HOST`)
    ///
    /// # Errors
    /// A [`ConfigError`] when `AZURE_POD_IDENTITY_AUTHORITY_HOST` is not a URL.
    pub fn from_env(env: &dyn EnvSource, id: ManagedIdentityId) -> Result<Self, ConfigError> {
        let imds = Self::new(id);
        match env::var(env, env::AZURE_POD_IDENTITY_AUTHORITY_HOST) {
            Some(host) => imds.with_pod_identity_host(&host),
            None => Ok(imds),
        }
    }

    /// Replaces the host as AAD Pod Identity does: trailing `/` stripped, token path appended
    ///
    /// # Errors
    /// A [`ConfigError`] on `AZURE_POD_IDENTITY_AUTHORITY_HOST` when it is not an http(s) URL.
    pub fn with_pod_identity_host(mut self, host: &str) -> Result<Self, ConfigError> {
        let base = host.trim().trim_end_matches('/');
        let endpoint = format!("{base}/metadata/identity/oauth2/token");
        match endpoint.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) => {
                self.endpoint = endpoint;
                Ok(self)
            }
            _ => Err(ConfigError::new(
                env::AZURE_POD_IDENTITY_AUTHORITY_HOST,
                format!("`{}` is not an http(s) URL", common::clip(base)),
            )),
        }
    }

    /// Asks for another resource than Redis (`https://redis.azure.com`)
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// The token URL without query
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The identity asked for
    pub fn identity(&self) -> &ManagedIdentityId {
        &self.id
    }

    fn url(&self) -> String {
        let mut query = vec![
            ("api-version", API_VERSION),
            ("resource", self.resource.as_str()),
        ];
        if let Some((name, value)) = self.id.query_pair("msi_res_id") {
            query.push((name, value));
        }
        common::with_query(&self.endpoint, &query)
    }

    /// The token request: `GET` with `Metadata: true`
    ///
    /// # Errors
    /// A [`ConfigError`] when the endpoint or an identifier makes an invalid URL.
    pub fn build_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        common::request(
            http::Method::GET,
            &self.url(),
            &[Header::plain("metadata", "true")],
            Vec::new(),
            "imds_endpoint",
        )
    }

    /// The availability probe: the same URL without `Metadata`, so a real IMDS answers 400 at once
    /// without calling Entra. Send it with [`PROBE_TIMEOUT`] and no retries; see
    /// [`Imds::parse_probe_response`].
    ///
    /// # Errors
    /// As [`Imds::build_request`].
    pub fn build_probe_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        common::request(
            http::Method::GET,
            &self.url(),
            &[],
            Vec::new(),
            "imds_endpoint",
        )
    }

    /// Whether a probe answer shows a real IMDS: any HTTP answer does, except a 403 whose body
    /// says "unreachable" (a proxy answering for an absent IMDS)
    ///
    /// A transport error or timeout of the probe means IMDS is not there.
    pub fn parse_probe_response(response: &http::Response<Vec<u8>>) -> bool {
        !is_unreachable_proxy(response)
    }

    /// Reads an IMDS answer
    ///
    /// # Errors
    /// A [`ResponseError`] classified by the IMDS retry rules; its `entra` field holds the
    /// `error` / `error_description` IMDS sent.
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        parse_imds_like(response, "IMDS (managed identity)")
    }
}

fn is_unreachable_proxy(response: &http::Response<Vec<u8>>) -> bool {
    response.status() == http::StatusCode::FORBIDDEN
        && String::from_utf8_lossy(response.body())
            .to_ascii_lowercase()
            .contains("unreachable")
}

/// IMDS-shaped answers (IMDS and Arc after its challenge)
pub(crate) fn parse_imds_like(
    response: &http::Response<Vec<u8>>,
    source: &str,
) -> Result<TokenResponse, ResponseError> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return common::token_response(response, source);
    }
    if is_unreachable_proxy(response) {
        return Err(ResponseError::new(
            format!(
                "{source} is unreachable: a proxy answered 403 for 169.254.169.254 (this is not \
                 an Azure VM, or IMDS is blocked); use another credential"
            ),
            false,
        )
        .with_status(status));
    }
    Err(common::status_error(response, source, RetryRules::Imds))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The statuses MSAL retries on every managed-identity host
    pub(crate) const MSAL_RETRYABLE: [u16; 6] = [408, 429, 500, 502, 503, 504];

    pub(crate) fn response(status: u16, body: &str) -> http::Response<Vec<u8>> {
        let mut response = http::Response::new(body.as_bytes().to_vec());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        response
    }

    fn built(imds: &Imds) -> crate::identity::IdentityRequest {
        match imds.build_request() {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn system_assigned_request_is_exact() {
        let request = built(&Imds::new(ManagedIdentityId::SystemAssigned));
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(
            request.uri().to_string(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fredis.azure.com"
        );
        assert_eq!(request.headers().len(), 1);
        assert_eq!(request.headers()["Metadata"], "true");
        assert!(request.headers().get("x-forwarded-for").is_none());
        assert!(request.body().is_empty());
    }

    #[test]
    fn user_assigned_selectors_use_imds_spellings() {
        let cases = [
            (ManagedIdentityId::ClientId("c1".into()), "&client_id=c1"),
            (ManagedIdentityId::ObjectId("o1".into()), "&object_id=o1"),
            (
                ManagedIdentityId::ResourceId("/subscriptions/s/x".into()),
                "&msi_res_id=%2Fsubscriptions%2Fs%2Fx",
            ),
        ];
        for (id, tail) in cases {
            let uri = built(&Imds::new(id)).uri().to_string();
            assert!(uri.ends_with(tail), "{uri}");
            assert_eq!(uri.matches("_id=").count(), 1, "{uri}");
        }
    }

    #[test]
    fn pod_identity_host_replaces_the_endpoint_with_or_without_slash() {
        for host in ["http://10.0.0.1:2579", "http://10.0.0.1:2579/"] {
            let mut map = BTreeMap::new();
            map.insert(env::AZURE_POD_IDENTITY_AUTHORITY_HOST, host);
            let imds = Imds::from_env(&map, ManagedIdentityId::SystemAssigned);
            assert_eq!(
                imds.as_ref().map(Imds::endpoint).ok(),
                Some("http://10.0.0.1:2579/metadata/identity/oauth2/token")
            );
        }
        let bad = Imds::new(ManagedIdentityId::SystemAssigned).with_pod_identity_host("::nope");
        assert!(bad.is_err());
    }

    #[test]
    fn probe_has_no_metadata_header_and_any_answer_but_unreachable_means_present() {
        let probe = Imds::new(ManagedIdentityId::SystemAssigned).build_probe_request();
        assert!(probe.is_ok_and(|p| p.headers().is_empty()));
        assert!(Imds::parse_probe_response(&response(400, "{}")));
        assert!(Imds::parse_probe_response(&response(200, "{}")));
        assert!(!Imds::parse_probe_response(&response(
            403,
            "connecting to 169.254.169.254:80: connecting to 169.254.169.254:80: dial tcp 169.254.169.254:80: connectex: A socket operation was attempted to an unreachable network."
        )));
    }

    #[test]
    fn string_typed_success_parses() {
        let imds = Imds::new(ManagedIdentityId::SystemAssigned);
        let body = r#"{"access_token":"eyJ0eXAiOiJKV1Qi.x.y","client_id":"11111111-2222-3333-4444-555555555555",
            "expires_in":"86399","expires_on":"1767225599","ext_expires_in":"86399",
            "not_before":"1767139199","resource":"https://redis.azure.com","token_type":"Bearer"}"#;
        let parsed = imds.parse_response(&response(200, body));
        let Ok(token) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(token.access_token.expose_secret(), "eyJ0eXAiOiJKV1Qi.x.y");
        assert_eq!(token.expires_in, Some(86399));
        assert_eq!(token.expires_on, Some(1_767_225_599));
        assert_eq!(token.refresh_in, None);
        assert_eq!(token.token_type.as_deref(), Some("Bearer"));
    }

    #[test]
    fn errors_follow_the_imds_retry_table() {
        let imds = Imds::new(ManagedIdentityId::SystemAssigned);
        let retryable = |status: u16, body: &str| {
            imds.parse_response(&response(status, body))
                .err()
                .map(|e| (e.retryable, e.status))
        };
        let missing_header = r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#;
        assert_eq!(retryable(400, missing_header), Some((false, Some(400))));
        for status in [404, 408, 410, 429, 500, 502, 503, 504] {
            assert_eq!(
                retryable(status, "{}"),
                Some((true, Some(status))),
                "{status}"
            );
        }
        assert_eq!(
            retryable(403, "unreachable network"),
            Some((false, Some(403)))
        );
        assert_eq!(
            retryable(200, "<html>hello</html>"),
            Some((false, Some(200)))
        );
        assert_eq!(
            retryable(200, r#"{"expires_in":"1"}"#),
            Some((false, Some(200)))
        );
        let error = imds.parse_response(&response(
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
        ));
        let text = error.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("invalid_request") && text.contains("Identity not found"),
            "{text}"
        );
        assert!(text.contains("assign a managed identity"), "{text}");
    }

    #[test]
    fn throttling_reads_retry_after() {
        let imds = Imds::new(ManagedIdentityId::SystemAssigned);
        let mut throttled = response(429, r#"{"error":"too_many_requests"}"#);
        throttled
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("5"));
        let error = imds.parse_response(&throttled).err();
        assert_eq!(
            error.and_then(|e| e.retry_after),
            Some(Duration::from_secs(5))
        );
        let error = imds.parse_response(&response(429, "")).err();
        assert!(error.is_some_and(|e| e.retryable && e.retry_after.is_none()));
    }

    #[test]
    fn request_timeout_and_msal_retry_statuses_are_retryable() {
        let imds = Imds::new(ManagedIdentityId::SystemAssigned);
        for status in MSAL_RETRYABLE {
            let error = imds.parse_response(&response(status, ""));
            assert!(error.is_err_and(|e| e.retryable), "{status}");
        }
    }
}
