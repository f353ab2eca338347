//! Managed identity on Azure Arc-enabled servers: a challenge, a key file, a second request
//!
//! 1. [`AzureArc::build_request`]: `GET {IDENTITY_ENDPOINT}?api-version=2020-06-01&resource=..`
//!    with `Metadata: true`.
//! 2. The agent answers `401` with `WWW-Authenticate: Basic realm=<path of a key file>`.
//!    [`AzureArc::parse_challenge`] checks the path: directly inside the agent's token directory
//!    (`/var/opt/azcmagent/tokens` on Linux, `%ProgramData%\AzureConnectedMachineAgent\Tokens` on
//!    Windows), extension `.key`. It returns the path the runtime must read, refusing files larger
//!    than [`MAX_KEY_FILE_LEN`] bytes (check the size before reading).
//! 3. [`AzureArc::build_authorized_request`]: the same request plus
//!    `Authorization: Basic <file contents verbatim>`.
//! 4. [`AzureArc::parse_response`]: an IMDS-shaped answer; for a user-assigned identity the answer
//!    must echo the selector, because older agents ignore it and return the system identity.
//!
//! The first 401 is part of the protocol, not a failure. Each retry starts again at step 1
//! (a new challenge, a new key file).

use std::path::PathBuf;

use serde_json::Value;

use crate::error::{ConfigError, ResponseError};
use crate::identity::authority::DEFAULT_RESOURCE;
use crate::identity::common::{self, Header, RetryRules};
use crate::identity::env::{self, EnvSource};
use crate::identity::imds::parse_imds_like;
use crate::identity::managed::ManagedIdentityId;
use crate::secret::SecretBytes;
use crate::token::TokenResponse;

/// The agent's default token URL
pub const DEFAULT_ENDPOINT: &str = "http://localhost:40342/metadata/identity/oauth2/token";
/// The api-version MSAL and Azure Identity send
pub const API_VERSION: &str = "2020-06-01";
/// Largest key file accepted
pub const MAX_KEY_FILE_LEN: u64 = 4096;
/// The Linux token directory
pub const LINUX_TOKEN_DIR: &str = "/var/opt/azcmagent/tokens";

/// Which operating system's key-file rules apply
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArcPlatform {
    /// Key files live in `/var/opt/azcmagent/tokens`
    Linux,
    /// Key files live in `{program_data}\AzureConnectedMachineAgent\Tokens`
    Windows {
        /// The value of `%ProgramData%`, e.g. `C:\ProgramData`
        program_data: String,
    },
}

impl ArcPlatform {
    /// The platform this build targets, taking `%ProgramData%` from `env` on Windows
    pub fn current(env: &dyn EnvSource) -> Self {
        if cfg!(windows) {
            ArcPlatform::Windows {
                program_data: env::var(env, env::PROGRAM_DATA)
                    .unwrap_or_else(|| r"C:\ProgramData".to_owned()),
            }
        } else {
            ArcPlatform::Linux
        }
    }

    fn token_dir(&self) -> String {
        match self {
            ArcPlatform::Linux => LINUX_TOKEN_DIR.to_owned(),
            ArcPlatform::Windows { program_data } => format!(
                r"{}\AzureConnectedMachineAgent\Tokens",
                program_data.trim_end_matches(['\\', '/'])
            ),
        }
    }

    /// Splits a path into (directory, file name) using this platform's separators
    fn split<'a>(&self, path: &'a str) -> Option<(&'a str, &'a str)> {
        let at = match self {
            ArcPlatform::Linux => path.rfind('/'),
            ArcPlatform::Windows { .. } => path.rfind(['\\', '/']),
        }?;
        Some((path.get(..at)?, path.get(at + 1..)?))
    }

    fn same_dir(&self, a: &str, b: &str) -> bool {
        match self {
            ArcPlatform::Linux => a == b,
            ArcPlatform::Windows { .. } => a.replace('/', "\\").eq_ignore_ascii_case(b),
        }
    }
}

/// The key file a challenge names, validated: read it (at most [`MAX_KEY_FILE_LEN`] bytes) and
/// pass its contents to [`AzureArc::build_authorized_request`]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArcKeyFile {
    /// The file to read
    pub path: PathBuf,
    /// Refuse the file when it is larger than this
    pub max_len: u64,
}

/// Azure Arc managed identity
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureArc {
    endpoint: String,
    resource: String,
    id: ManagedIdentityId,
    platform: ArcPlatform,
}

impl AzureArc {
    /// Arc at `endpoint` (`IDENTITY_ENDPOINT`)
    ///
    /// # Errors
    /// A [`ConfigError`] when the endpoint is not an http(s) URL or the id is blank.
    pub fn new(
        endpoint: &str,
        id: ManagedIdentityId,
        platform: ArcPlatform,
    ) -> Result<Self, ConfigError> {
        id.validate()?;
        Ok(Self {
            endpoint: common::endpoint_url(env::IDENTITY_ENDPOINT, endpoint, false)?,
            resource: DEFAULT_RESOURCE.to_owned(),
            id,
            platform,
        })
    }

    /// From `IDENTITY_ENDPOINT`, or the agent's default endpoint
    ///
    /// # Errors
    /// As [`AzureArc::new`].
    pub fn from_env(env: &dyn EnvSource, id: ManagedIdentityId) -> Result<Self, ConfigError> {
        let endpoint =
            env::var(env, env::IDENTITY_ENDPOINT).unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        Self::new(&endpoint, id, ArcPlatform::current(env))
    }

    /// Asks for another resource than Redis
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    fn request(
        &self,
        authorization: Option<&str>,
    ) -> Result<crate::identity::IdentityRequest, ConfigError> {
        let mut query = vec![
            ("api-version", API_VERSION),
            ("resource", self.resource.as_str()),
        ];
        query.extend(self.id.query_pair("msi_res_id"));
        let mut headers = vec![Header::plain("metadata", "true")];
        if let Some(value) = authorization {
            headers.push(Header::secret("authorization", value));
        }
        common::request(
            http::Method::GET,
            &common::with_query(&self.endpoint, &query),
            &headers,
            Vec::new(),
            env::IDENTITY_ENDPOINT,
        )
    }

    /// The first request, which the agent answers with a challenge
    ///
    /// # Errors
    /// A [`ConfigError`] when the URL is invalid.
    pub fn build_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        self.request(None)
    }

    /// Reads the challenge and validates the key-file path it names
    ///
    /// # Errors
    /// A [`ResponseError`] when the status is not 401 (classified by the IMDS rules), the
    /// `WWW-Authenticate` header is missing or not `Basic realm=<path>`, or the path is outside
    /// the token directory or lacks the `.key` extension (none of these is retryable).
    pub fn parse_challenge(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<ArcKeyFile, ResponseError> {
        let status = response.status().as_u16();
        if status != 401 {
            if response.status().is_success() {
                return Err(ResponseError::new(
                    "Azure Arc answered the first request without the expected 401 challenge; \
                     IDENTITY_ENDPOINT may not point at the Arc agent",
                    false,
                )
                .with_status(status));
            }
            return Err(common::status_error(
                response,
                "Azure Arc",
                RetryRules::Imds,
            ));
        }
        let refuse = |why: String| ResponseError::new(why, false).with_status(status);
        let header = common::header_str(response.headers(), "www-authenticate")
            .ok_or_else(|| {
                refuse(
                    "Azure Arc sent 401 without a WWW-Authenticate header naming the key file"
                        .into(),
                )
            })?
            .trim();
        let prefix = "basic realm=";
        let path = match header.get(..prefix.len()) {
            Some(p) if p.eq_ignore_ascii_case(prefix) => header.get(prefix.len()..).unwrap_or(""),
            _ => {
                return Err(refuse(
                    "Azure Arc's WWW-Authenticate header is not `Basic realm=<path>`".into(),
                ))
            }
        };
        let path = path.trim().trim_matches('"');
        self.validate_key_path(path).map_err(refuse)?;
        Ok(ArcKeyFile {
            path: PathBuf::from(path),
            max_len: MAX_KEY_FILE_LEN,
        })
    }

    fn validate_key_path(&self, path: &str) -> Result<(), String> {
        let dir = self.platform.token_dir();
        let shown = common::clip(path);
        if path.contains('\0') {
            return Err("Azure Arc's key-file path contains a NUL byte".into());
        }
        let Some((parent, name)) = self.platform.split(path) else {
            return Err(format!(
                "Azure Arc's key-file path `{shown}` is not absolute"
            ));
        };
        if !self.platform.same_dir(parent, &dir) {
            return Err(format!(
                "Azure Arc's key file `{shown}` is not directly inside {dir}; refusing to read it"
            ));
        }
        let stem = name.strip_suffix(".key").unwrap_or("");
        if stem.is_empty() || stem.starts_with('.') || stem.contains(['/', '\\']) {
            return Err(format!(
                "Azure Arc's key file `{shown}` must be a `.key` file; refusing to read it"
            ));
        }
        Ok(())
    }

    /// The second request, carrying the key file's contents verbatim
    ///
    /// # Errors
    /// A [`ResponseError`] (not retryable) when the file is empty, larger than
    /// [`MAX_KEY_FILE_LEN`] or not printable ASCII text.
    pub fn build_authorized_request(
        &self,
        key: &SecretBytes,
    ) -> Result<crate::identity::IdentityRequest, ResponseError> {
        let len = u64::try_from(key.len()).unwrap_or(u64::MAX);
        if key.is_empty() || len > MAX_KEY_FILE_LEN {
            return Err(ResponseError::new(
                format!(
                    "Azure Arc's key file has {len} bytes; it must hold 1 to {MAX_KEY_FILE_LEN}"
                ),
                false,
            ));
        }
        let text = std::str::from_utf8(key.expose_secret())
            .map_err(|_| ResponseError::new("Azure Arc's key file is not text", false))?;
        let value = crate::secret::SecretString::new(format!("Basic {text}"));
        self.request(Some(value.expose_secret())).map_err(|_| {
            ResponseError::new(
                "Azure Arc's key file holds characters not allowed in an HTTP header",
                false,
            )
        })
    }

    /// Reads the answer to the second request
    ///
    /// # Errors
    /// A [`ResponseError`]: IMDS rules, a second 401 is final, and a user-assigned request whose
    /// answer does not echo the selector fails closed.
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        if response.status() == http::StatusCode::UNAUTHORIZED {
            return Err(ResponseError::new(
                "Azure Arc rejected the key file (401 on the authorized request); the process \
                 may lack membership of the himds group",
                false,
            )
            .with_status(401));
        }
        let token = parse_imds_like(response, "Azure Arc")?;
        if let Some((name, wanted)) = self.id.query_pair("msi_res_id") {
            let echoed = common::json_object(response.body()).and_then(|map| match map.get(name) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            });
            if !echoed.is_some_and(|e| e.eq_ignore_ascii_case(wanted)) {
                return Err(ResponseError::new(
                    format!(
                        "Azure Arc did not confirm the {} (its answer lacks a matching `{name}`); \
                         this agent may not support user-assigned identities",
                        self.id.describe()
                    ),
                    false,
                )
                .with_status(response.status().as_u16()));
            }
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::imds::tests::{response, MSAL_RETRYABLE};

    const KEY_PATH: &str = "/var/opt/azcmagent/tokens/4d6f0c9e-1a2b-4c3d-8e9f-0a1b2c3d4e5f.key";

    fn arc(id: ManagedIdentityId) -> AzureArc {
        match AzureArc::new(DEFAULT_ENDPOINT, id, ArcPlatform::Linux) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn challenge(value: &str) -> http::Response<Vec<u8>> {
        let mut r = response(401, "");
        if let Ok(v) = http::HeaderValue::from_str(value) {
            r.headers_mut().insert("www-authenticate", v);
        }
        r
    }

    #[test]
    fn first_request_is_exact() {
        let request = arc(ManagedIdentityId::SystemAssigned).build_request();
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(
            request.uri().to_string(),
            "http://localhost:40342/metadata/identity/oauth2/token?api-version=2020-06-01&resource=https%3A%2F%2Fredis.azure.com"
        );
        assert_eq!(request.headers()["Metadata"], "true");
        assert!(request.headers().get("authorization").is_none());
    }

    #[test]
    fn challenge_names_a_validated_key_file() {
        let a = arc(ManagedIdentityId::SystemAssigned);
        let file = a.parse_challenge(&challenge(&format!("Basic realm={KEY_PATH}")));
        assert_eq!(
            file,
            Ok(ArcKeyFile {
                path: PathBuf::from(KEY_PATH),
                max_len: 4096
            })
        );
        let lower = a.parse_challenge(&challenge(&format!("basic REALM={KEY_PATH}")));
        assert!(lower.is_ok());
    }

    #[test]
    fn bad_challenges_are_refused_without_retry() {
        let a = arc(ManagedIdentityId::SystemAssigned);
        for header in [
            "Basic realm=/etc/passwd.key",
            "Basic realm=/var/opt/azcmagent/tokens/../../../etc/shadow.key",
            "Basic realm=/var/opt/azcmagent/tokens/sub/x.key",
            "Basic realm=/var/opt/azcmagent/tokens/x.txt",
            "Basic realm=/var/opt/azcmagent/tokens/.key",
            "Basic realm=relative.key",
            "Bearer realm=/var/opt/azcmagent/tokens/x.key",
            "Basic realm=",
        ] {
            let error = a.parse_challenge(&challenge(header));
            assert!(error.is_err_and(|e| !e.retryable), "{header}");
        }
        let missing = a.parse_challenge(&response(401, ""));
        assert!(missing.is_err_and(|e| e.message.contains("WWW-Authenticate")));
        let not_401 = a.parse_challenge(&response(200, "{}"));
        assert!(not_401.is_err_and(|e| e.message.contains("expected 401")));
        let busy = a.parse_challenge(&response(503, ""));
        assert!(busy.is_err_and(|e| e.retryable));
    }

    #[test]
    fn windows_token_directory_is_enforced_case_insensitively() {
        let platform = ArcPlatform::Windows {
            program_data: r"C:\ProgramData".into(),
        };
        let Ok(a) = AzureArc::new(
            DEFAULT_ENDPOINT,
            ManagedIdentityId::SystemAssigned,
            platform,
        ) else {
            panic!("valid")
        };
        let ok = a.parse_challenge(&challenge(
            r"Basic realm=C:\ProgramData\AzureConnectedMachineAgent\Tokens\abc.key",
        ));
        assert!(ok.is_ok());
        let upper = a.parse_challenge(&challenge(
            r"Basic realm=c:\programdata\azureconnectedmachineagent\tokens\abc.key",
        ));
        assert!(upper.is_ok());
        let outside = a.parse_challenge(&challenge(r"Basic realm=C:\Temp\abc.key"));
        assert!(outside.is_err());
    }

    #[test]
    fn second_request_carries_the_file_verbatim_and_size_is_limited() {
        let a = arc(ManagedIdentityId::SystemAssigned);
        let key = SecretBytes::new(b"3fQ1secretkeycontents".to_vec());
        let request = a.build_authorized_request(&key);
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(
            request.headers()["Authorization"],
            "Basic 3fQ1secretkeycontents"
        );
        assert_eq!(request.headers()["Metadata"], "true");
        assert!(!format!("{request:?}").contains("3fQ1secret"));
        let big = SecretBytes::new(vec![b'a'; 4097]);
        assert!(a.build_authorized_request(&big).is_err());
        let max = SecretBytes::new(vec![b'a'; 4096]);
        assert!(a.build_authorized_request(&max).is_ok());
        let binary = SecretBytes::new(vec![0xff, 0xfe]);
        assert!(a.build_authorized_request(&binary).is_err());
        let newline = SecretBytes::new(b"abc\r\nX-Evil: 1".to_vec());
        assert!(a.build_authorized_request(&newline).is_err());
    }

    #[test]
    fn answer_parses_and_user_assigned_must_be_echoed() {
        let body = r#"{"access_token":"t","expires_in":"3599","expires_on":"1767143999","token_type":"Bearer","client_id":"C1"}"#;
        let system = arc(ManagedIdentityId::SystemAssigned).parse_response(&response(200, body));
        assert_eq!(system.ok().and_then(|t| t.expires_in), Some(3599));
        let echoed =
            arc(ManagedIdentityId::ClientId("c1".into())).parse_response(&response(200, body));
        assert!(echoed.is_ok());
        let other =
            arc(ManagedIdentityId::ClientId("c2".into())).parse_response(&response(200, body));
        assert!(other.is_err_and(|e| !e.retryable && e.message.contains("did not confirm")));
        let again = arc(ManagedIdentityId::SystemAssigned).parse_response(&response(401, ""));
        assert!(again.is_err_and(|e| !e.retryable));
        let busy = arc(ManagedIdentityId::SystemAssigned).parse_response(&response(500, ""));
        assert!(busy.is_err_and(|e| e.retryable));
    }

    #[test]
    fn request_timeout_and_msal_retry_statuses_are_retryable_on_both_requests() {
        let a = arc(ManagedIdentityId::SystemAssigned);
        for status in MSAL_RETRYABLE {
            let challenge = a.parse_challenge(&response(status, ""));
            assert!(challenge.is_err_and(|e| e.retryable), "challenge {status}");
            let answer = a.parse_response(&response(status, ""));
            assert!(answer.is_err_and(|e| e.retryable), "answer {status}");
        }
    }
}
