//! Access tokens, Redis credentials and the abstract token response every identity flow produces

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::secret::{SecretString, REDACTED};

/// An Entra ID access token: the Redis password
///
/// Redacted in `Debug`, no `Display`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(SecretString);

// Written out rather than derived (no `zeroize_derive`): the inner `SecretString` already
// zeroizes itself on drop, which is what makes this `ZeroizeOnDrop`.
impl Zeroize for AccessToken {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for AccessToken {}

impl AccessToken {
    /// Wraps a token
    pub fn new(token: impl Into<String>) -> Self {
        Self(SecretString::new(token))
    }

    /// The raw token, for the `AUTH` command and nothing else
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AccessToken")
            .field(&format_args!("{REDACTED}"))
            .finish()
    }
}

/// What a connection sends in `AUTH <username> <password>`
///
/// The username is the token's `oid` claim (or the configured override); the password is the
/// access token. `Debug` shows the username and redacts the password. Clones share one
/// allocation (handing credentials to a thousand connections copies no token), and the token
/// is zeroized when the last clone is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: Arc<str>,
    password: Arc<AccessToken>,
}

impl Credentials {
    /// Pairs a username with a token
    pub fn new(username: impl Into<String>, password: AccessToken) -> Self {
        Self {
            username: Arc::from(username.into()),
            password: Arc::new(password),
        }
    }

    /// The Redis username (the token's `oid` unless overridden)
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The Redis password: the access token
    pub fn password(&self) -> &AccessToken {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &format_args!("{REDACTED}"))
            .finish()
    }
}

/// A token as an identity endpoint returned it, before the machine judges its lifetime
///
/// Every identity flow parses its wire format into this one shape, so the machine depends on no
/// flow. Times are raw seconds exactly as the endpoint sent them (already turned from strings or
/// dates into integers); the machine clamps negative and absurd values. When several lifetime
/// fields are present the machine takes the earliest expiry they imply, because the server
/// enforces the earliest one and an endpoint that serves a cached token may report `expires_in`
/// from issuance rather than from now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenResponse {
    /// The access token
    pub access_token: AccessToken,
    /// Seconds of validity counted from when the request was sent
    pub expires_in: Option<i64>,
    /// Absolute expiry, Unix seconds
    pub expires_on: Option<i64>,
    /// Seconds after which the endpoint recommends a refresh (Entra's `refresh_in`)
    pub refresh_in: Option<i64>,
    /// The token type as sent (`Bearer`), for diagnostics
    pub token_type: Option<String>,
    /// The server's clock when it answered: the HTTP `Date` header, when present and valid
    ///
    /// The machine converts `expires_on` and the JWT `exp` with it instead of the host's wall
    /// clock, so a skewed host clock does not shorten or lengthen lifetimes.
    pub server_date: Option<SystemTime>,
}

impl TokenResponse {
    /// A response holding only a token: its lifetime then comes from the JWT `exp` claim
    pub fn new(access_token: AccessToken) -> Self {
        Self {
            access_token,
            expires_in: None,
            expires_on: None,
            refresh_in: None,
            token_type: None,
            server_date: None,
        }
    }

    /// Sets the relative lifetime in seconds
    #[must_use]
    pub fn with_expires_in(mut self, seconds: i64) -> Self {
        self.expires_in = Some(seconds);
        self
    }

    /// Sets the absolute expiry in Unix seconds
    #[must_use]
    pub fn with_expires_on(mut self, unix_seconds: i64) -> Self {
        self.expires_on = Some(unix_seconds);
        self
    }

    /// Sets the endpoint's refresh hint in seconds
    #[must_use]
    pub fn with_refresh_in(mut self, seconds: i64) -> Self {
        self.refresh_in = Some(seconds);
        self
    }

    /// Sets the server's clock at the answer (its HTTP `Date` header)
    #[must_use]
    pub fn with_server_date(mut self, date: SystemTime) -> Self {
        self.server_date = Some(date);
        self
    }

    /// Sets the token type
    #[must_use]
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = Some(token_type.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_shows_username_but_not_token() {
        let creds = Credentials::new("oid-1234", AccessToken::new("eyJ.secret.sig"));
        let printed = format!("{creds:?}");
        assert!(printed.contains("oid-1234"));
        assert!(!printed.contains("eyJ"), "{printed}");
        let response = TokenResponse::new(AccessToken::new("eyJ.secret.sig")).with_expires_in(60);
        let printed = format!("{response:?}");
        assert!(!printed.contains("eyJ"), "{printed}");
    }

    #[test]
    fn access_token_is_zeroize_on_drop() {
        fn assert_zeroize_on_drop<T: ZeroizeOnDrop>() {}
        assert_zeroize_on_drop::<AccessToken>();
    }
}
