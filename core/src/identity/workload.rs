//! Workload identity (AKS federated credentials)
//!
//! The runtime reads `AZURE_FEDERATED_TOKEN_FILE` at **every** fetch (the kubelet rotates the
//! projected service-account token) and passes its text to [`WorkloadIdentity::build_request`]:
//! `POST {authority}/{tenant}/oauth2/v2.0/token` with the form `client_assertion=<file text>`,
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, `client_id`,
//! `grant_type=client_credentials`, `scope`. Answers as [`entra::parse_response`]. Environment:
//! `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`.

use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ResponseError};
use crate::identity::entra::{self, EntraClient, JWT_BEARER};
use crate::identity::env::{self, EnvSource};
use crate::secret::SecretString;
use crate::token::TokenResponse;

/// Largest projected token file accepted (service-account tokens are about 1 KiB)
pub const MAX_TOKEN_FILE_LEN: u64 = 64 * 1024;

/// Workload identity federation
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentity {
    client: EntraClient,
    token_file: PathBuf,
}

impl WorkloadIdentity {
    /// A client and the path of its projected token
    ///
    /// # Errors
    /// A [`ConfigError`] when the path is empty.
    pub fn new(client: EntraClient, token_file: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let token_file = token_file.into();
        if token_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                env::AZURE_FEDERATED_TOKEN_FILE,
                "empty path",
            ));
        }
        Ok(Self { client, token_file })
    }

    /// From `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_AUTHORITY_HOST`
    ///
    /// # Errors
    /// A [`ConfigError`] naming the missing or invalid variable.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let file = env::var(env, env::AZURE_FEDERATED_TOKEN_FILE)
            .ok_or_else(|| ConfigError::new(env::AZURE_FEDERATED_TOKEN_FILE, "not set"))?;
        Self::new(EntraClient::from_env(env)?, file)
    }

    /// The client
    pub fn client(&self) -> &EntraClient {
        &self.client
    }

    /// The file the runtime must read before each request
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The token request, with the assertion read from [`WorkloadIdentity::token_file`] just now
    ///
    /// # Errors
    /// A [`ConfigError`] on `AZURE_FEDERATED_TOKEN_FILE` when the file is empty, or on
    /// `authority_host` when the URL is invalid.
    pub fn build_request(
        &self,
        assertion: &SecretString,
    ) -> Result<crate::identity::IdentityRequest, ConfigError> {
        let assertion = assertion.expose_secret().trim();
        if assertion.is_empty() {
            return Err(ConfigError::new(
                env::AZURE_FEDERATED_TOKEN_FILE,
                "the token file is empty; check the service account's projected volume",
            ));
        }
        self.client.form_request(&[
            ("client_assertion", assertion),
            ("client_assertion_type", JWT_BEARER),
        ])
    }

    /// Reads the answer
    ///
    /// # Errors
    /// As [`entra::parse_response`].
    pub fn parse_response(
        &self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<TokenResponse, ResponseError> {
        entra::parse_response(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_map() -> BTreeMap<&'static str, &'static str> {
        let mut map = BTreeMap::new();
        map.insert(env::AZURE_CLIENT_ID, "11111111-2222-3333-4444-555555555555");
        map.insert(env::AZURE_TENANT_ID, "72f988bf-0000-0000-0000-000000000000");
        map.insert(
            env::AZURE_FEDERATED_TOKEN_FILE,
            "/var/run/secrets/azure/tokens/azure-identity-token",
        );
        map.insert(
            env::AZURE_AUTHORITY_HOST,
            "https://login.microsoftonline.com/",
        );
        map
    }

    #[test]
    fn request_is_exact_and_uses_the_assertion_given_each_time() {
        let workload = WorkloadIdentity::from_env(&env_map());
        let Ok(workload) = workload else {
            panic!("{workload:?}")
        };
        assert_eq!(
            workload.token_file(),
            Path::new("/var/run/secrets/azure/tokens/azure-identity-token")
        );
        let first = workload.build_request(&SecretString::new("eyJhbGciOi.first.sig\n"));
        let Ok(first) = first else {
            panic!("{first:?}")
        };
        assert_eq!(first.method(), http::Method::POST);
        assert_eq!(
            first.uri().to_string(),
            "https://login.microsoftonline.com/72f988bf-0000-0000-0000-000000000000/oauth2/v2.0/token"
        );
        assert_eq!(
            String::from_utf8_lossy(first.body()),
            "client_assertion=eyJhbGciOi.first.sig&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_id=11111111-2222-3333-4444-555555555555&grant_type=client_credentials&scope=https%3A%2F%2Fredis.azure.com%2F.default"
        );
        let rotated = workload.build_request(&SecretString::new("eyJhbGciOi.second.sig"));
        assert!(rotated.is_ok_and(|r| String::from_utf8_lossy(r.body()).contains("second")));
        assert!(workload.build_request(&SecretString::new(" \n")).is_err());
    }

    #[test]
    fn missing_variables_are_named() {
        for name in [
            env::AZURE_FEDERATED_TOKEN_FILE,
            env::AZURE_CLIENT_ID,
            env::AZURE_TENANT_ID,
        ] {
            let mut map = env_map();
            map.remove(name);
            let error = WorkloadIdentity::from_env(&map).err();
            assert!(error.is_some(), "{name}");
        }
    }

    #[test]
    fn regional_authority_name_applies_to_workload_identity_requests() {
        let mut map = env_map();
        map.insert(env::AZURE_REGIONAL_AUTHORITY_NAME, "westeurope");
        let request = WorkloadIdentity::from_env(&map)
            .and_then(|w| w.build_request(&SecretString::new("eyJ.a.b")));
        assert!(request.is_ok_and(|r| r.uri()
            == "https://westeurope.login.microsoft.com/72f988bf-0000-0000-0000-000000000000/oauth2/v2.0/token"));
    }
}
