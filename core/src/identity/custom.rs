//! Tokens from elsewhere: a user-supplied callback, or a fixed token for tests and scripts

use std::fmt;
use std::sync::Arc;

use crate::error::FetchError;
use crate::identity::authority::DEFAULT_SCOPE;
use crate::token::{AccessToken, TokenResponse};

/// Produces a token on request; the runtime calls it (async runtimes on a blocking pool)
///
/// Any `Fn(&str) -> Result<TokenResponse, FetchError> + Send + Sync` closure is one; it receives
/// the scope.
pub trait TokenCallback: Send + Sync {
    /// A token for `scope`
    ///
    /// # Errors
    /// Whatever the callback reports; classify it with [`FetchError`] so the machine knows
    /// whether to retry.
    fn get_token(&self, scope: &str) -> Result<TokenResponse, FetchError>;
}

impl<F> TokenCallback for F
where
    F: Fn(&str) -> Result<TokenResponse, FetchError> + Send + Sync,
{
    fn get_token(&self, scope: &str) -> Result<TokenResponse, FetchError> {
        self(scope)
    }
}

/// A user-supplied token source
///
/// ```
/// use redis_entraid_core::identity::custom::CustomSource;
/// use redis_entraid_core::token::{AccessToken, TokenResponse};
/// let source = CustomSource::new("vault", |_scope: &str| {
///     Ok(TokenResponse::new(AccessToken::new("eyJ.a.b")).with_expires_in(3600))
/// });
/// assert_eq!(source.call().map(|t| t.expires_in), Ok(Some(3600)));
/// ```
#[derive(Clone)]
pub struct CustomSource {
    name: String,
    scope: String,
    callback: Arc<dyn TokenCallback>,
}

impl CustomSource {
    /// A named callback asked for the Redis scope
    pub fn new(name: impl Into<String>, callback: impl TokenCallback + 'static) -> Self {
        Self {
            name: name.into(),
            scope: DEFAULT_SCOPE.to_owned(),
            callback: Arc::new(callback),
        }
    }

    /// Another scope
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// The name shown in errors and events
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scope passed to the callback
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Calls the callback
    ///
    /// # Errors
    /// Whatever the callback returns.
    pub fn call(&self) -> Result<TokenResponse, FetchError> {
        self.callback.get_token(&self.scope)
    }
}

impl PartialEq for CustomSource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.scope == other.scope
            && Arc::ptr_eq(&self.callback, &other.callback)
    }
}

impl fmt::Debug for CustomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomSource")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A fixed token (tests, scripts, tokens minted elsewhere); its lifetime comes from
/// `expires_on` or, when absent, from the JWT's `exp`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticToken {
    token: AccessToken,
    expires_on: Option<i64>,
}

impl StaticToken {
    /// A token whose lifetime the machine reads from its `exp` claim
    pub fn new(token: AccessToken) -> Self {
        Self {
            token,
            expires_on: None,
        }
    }

    /// Sets the absolute expiry (Unix seconds)
    #[must_use]
    pub fn with_expires_on(mut self, unix_seconds: i64) -> Self {
        self.expires_on = Some(unix_seconds);
        self
    }

    /// The token response handed to the machine, the same at every fetch
    pub fn response(&self) -> TokenResponse {
        let response = TokenResponse::new(self.token.clone());
        match self.expires_on {
            Some(at) => response.with_expires_on(at),
            None => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TransportError;

    #[test]
    fn custom_callbacks_get_the_scope_and_their_errors_pass_through() {
        let source = CustomSource::new("echo", |scope: &str| {
            if scope == DEFAULT_SCOPE {
                Ok(TokenResponse::new(AccessToken::new("t")).with_expires_in(60))
            } else {
                Err(TransportError::new("wrong scope").into())
            }
        });
        assert_eq!(source.call().map(|t| t.expires_in), Ok(Some(60)));
        let other = source.clone().with_scope("x/.default");
        assert!(other.call().is_err_and(|e| e.is_retryable()));
        assert_eq!(source, source.clone());
        assert!(format!("{source:?}").contains("echo"));
    }

    #[test]
    fn static_token_is_returned_unchanged_and_debug_hides_it() {
        let fixed =
            StaticToken::new(AccessToken::new("eyJ.static.sig")).with_expires_on(1_767_225_600);
        let response = fixed.response();
        assert_eq!(response.access_token.expose_secret(), "eyJ.static.sig");
        assert_eq!(response.expires_on, Some(1_767_225_600));
        assert!(!format!("{fixed:?}").contains("eyJ"));
    }
}
