//! Service principal with a client secret
//!
//! `POST {authority}/{tenant}/oauth2/v2.0/token` with the form
//! `client_id=..&client_secret=..&grant_type=client_credentials&scope=..`. Answers as
//! [`entra::parse_response`]. Environment: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//! `AZURE_CLIENT_SECRET`, `AZURE_AUTHORITY_HOST`.

use crate::error::{ConfigError, ResponseError};
use crate::identity::entra::{self, EntraClient};
use crate::identity::env::{self, EnvSource};
use crate::secret::SecretString;
use crate::token::TokenResponse;

/// A service principal authenticating with a client secret
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSecret {
    client: EntraClient,
    secret: SecretString,
}

impl ClientSecret {
    /// A client and its secret
    ///
    /// # Errors
    /// A [`ConfigError`] on `client_secret` when the secret is empty.
    pub fn new(client: EntraClient, secret: SecretString) -> Result<Self, ConfigError> {
        if secret.is_empty() {
            return Err(ConfigError::new(
                "client_secret",
                "empty: give the secret's value (not its id); set AZURE_CLIENT_SECRET",
            ));
        }
        Ok(Self { client, secret })
    }

    /// From `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_AUTHORITY_HOST`
    ///
    /// # Errors
    /// A [`ConfigError`] naming the missing or invalid variable.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let secret = env::var(env, env::AZURE_CLIENT_SECRET)
            .ok_or_else(|| ConfigError::new(env::AZURE_CLIENT_SECRET, "not set"))?;
        Self::new(EntraClient::from_env(env)?, SecretString::new(secret))
    }

    /// The client
    pub fn client(&self) -> &EntraClient {
        &self.client
    }

    /// The token request
    ///
    /// # Errors
    /// A [`ConfigError`] when the authority makes an invalid URL.
    pub fn build_request(&self) -> Result<crate::identity::IdentityRequest, ConfigError> {
        self.client
            .form_request(&[("client_secret", self.secret.expose_secret())])
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
    use crate::identity::authority::Authority;
    use std::collections::BTreeMap;

    const SECRET: &str = "s3cr3t+/~%&=x y";

    #[test]
    fn request_is_exact_and_secret_is_form_encoded() {
        let client = EntraClient::new(
            "72f988bf-0000-0000-0000-000000000000",
            "11111111-2222-3333-4444-555555555555",
        );
        let request = client
            .and_then(|c| ClientSecret::new(c, SecretString::new(SECRET)))
            .and_then(|s| s.build_request());
        let Ok(request) = request else {
            panic!("{request:?}")
        };
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(
            request.uri().to_string(),
            "https://login.microsoftonline.com/72f988bf-0000-0000-0000-000000000000/oauth2/v2.0/token"
        );
        assert_eq!(
            request.headers()["Content-Type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(request.headers().len(), 1);
        assert_eq!(
            String::from_utf8_lossy(request.body()),
            "client_id=11111111-2222-3333-4444-555555555555&client_secret=s3cr3t%2B%2F%7E%25%26%3Dx+y&grant_type=client_credentials&scope=https%3A%2F%2Fredis.azure.com%2F.default"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(request.body())
            .into_owned()
            .collect();
        assert!(decoded.contains(&("client_secret".to_owned(), SECRET.to_owned())));
    }

    #[test]
    fn env_names_and_meanings_match_the_azure_sdks() {
        let mut map = BTreeMap::new();
        map.insert(env::AZURE_TENANT_ID, "t1");
        map.insert(env::AZURE_CLIENT_ID, "c1");
        map.insert(env::AZURE_CLIENT_SECRET, SECRET);
        map.insert(env::AZURE_AUTHORITY_HOST, "https://login.chinacloudapi.cn/");
        let secret = ClientSecret::from_env(&map);
        let Ok(secret) = secret else {
            panic!("{secret:?}")
        };
        assert_eq!(
            secret.client().token_url(),
            "https://login.chinacloudapi.cn/t1/oauth2/v2.0/token"
        );
        assert_eq!(secret.client().client_id(), "c1");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        map.insert(env::AZURE_TENANT_ID, "organizations");
        let error = ClientSecret::from_env(&map);
        assert!(error.is_err_and(|e| e.field == "tenant_id"));
        map.remove(env::AZURE_TENANT_ID);
        assert!(ClientSecret::from_env(&map).is_err_and(|e| e.field == "tenant_id"));
    }

    #[test]
    fn sovereign_and_loopback_authorities_and_custom_scope() {
        let client =
            EntraClient::new("t", "c").map(|c| c.with_authority(Authority::us_government()));
        assert_eq!(
            client.as_ref().map(EntraClient::token_url).ok().as_deref(),
            Some("https://login.microsoftonline.us/t/oauth2/v2.0/token")
        );
        let emulator = Authority::parse("http://127.0.0.1:8080")
            .and_then(|a| EntraClient::new("t", "c").map(|c| c.with_authority(a)));
        assert_eq!(
            emulator.map(|c| c.token_url()).ok().as_deref(),
            Some("http://127.0.0.1:8080/t/oauth2/v2.0/token")
        );
        assert!(client
            .clone()
            .and_then(|c| c.with_scope("https://x/.default"))
            .is_ok());
        assert!(client.and_then(|c| c.with_scope("https://x")).is_err());
        assert!(ClientSecret::new(
            EntraClient::new("t", "c").unwrap_or_else(|e| panic!("{e}")),
            SecretString::new("")
        )
        .is_err());
    }
}
