//! Errors, split by who is at fault
//!
//! - [`ConfigError`]: the caller gave an invalid setting.
//! - [`ResponseError`]: the identity provider answered, but not with a usable token.
//! - [`TransportError`]: the request never got an answer (network, timeout, process failure).
//! - [`ReauthError`]: Redis refused or failed the `AUTH` with a new token.
//!
//! [`FetchError`] is what a token fetch reports to the machine: a transport or response error,
//! or a token the machine could not use. Recoverable failures reach the application as
//! [`Event`](crate::event::Event)s, never as `Err`; only builders return `Result`.
//! No error message ever carries a secret.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::jwt::JwtError;

/// An invalid setting, naming the field and the allowed range
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting that was wrong, as named in the builder
    pub field: &'static str,
    /// What was wrong and what is allowed
    pub problem: String,
}

impl ConfigError {
    /// A new configuration error
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// The error body Entra ID sends with a failed token request
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntraErrorBody {
    /// OAuth error code (`invalid_client`, `temporarily_unavailable`, ...)
    pub error: Option<String>,
    /// Human-readable description (may be long; already free of secrets)
    pub error_description: Option<String>,
    /// Numeric AADSTS codes
    pub error_codes: Vec<i64>,
    /// Correlation id to quote to Microsoft support
    pub correlation_id: Option<String>,
    /// Trace id to quote to Microsoft support
    pub trace_id: Option<String>,
}

impl EntraErrorBody {
    /// An error body with just the OAuth error code
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// Sets the description
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.error_description = Some(description.into());
        self
    }

    /// Sets the AADSTS codes
    #[must_use]
    pub fn with_codes(mut self, codes: Vec<i64>) -> Self {
        self.error_codes = codes;
        self
    }

    /// Sets the correlation id
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the trace id
    #[must_use]
    pub fn with_trace_id(mut self, id: impl Into<String>) -> Self {
        self.trace_id = Some(id.into());
        self
    }
}

/// The identity provider answered, but not with a usable token
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseError {
    /// What went wrong, in words, without secrets
    pub message: String,
    /// HTTP status, when the answer was HTTP
    pub status: Option<u16>,
    /// Whether trying again may succeed (per the flow's retry rules)
    pub retryable: bool,
    /// How long the provider asked us to wait (`Retry-After`)
    pub retry_after: Option<Duration>,
    /// Entra's structured error body, when there was one (boxed: it is rare and large)
    pub entra: Option<Box<EntraErrorBody>>,
}

impl ResponseError {
    /// A new response error
    pub fn new(message: impl Into<String>, retryable: bool) -> Self {
        Self {
            message: message.into(),
            status: None,
            retryable,
            retry_after: None,
            entra: None,
        }
    }

    /// Sets the HTTP status
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the provider's `Retry-After`
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Attaches Entra's error body
    #[must_use]
    pub fn with_entra(mut self, body: EntraErrorBody) -> Self {
        self.entra = Some(Box::new(body));
        self
    }
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(entra) = &self.entra {
            if let Some(error) = &entra.error {
                write!(f, "; error: {error}")?;
            }
            if let Some(description) = &entra.error_description {
                write!(f, "; description: {description}")?;
            }
            if !entra.error_codes.is_empty() {
                write!(f, "; codes: {:?}", entra.error_codes)?;
            }
            if let Some(id) = &entra.correlation_id {
                write!(f, "; correlation id: {id}")?;
            }
            if let Some(id) = &entra.trace_id {
                write!(f, "; trace id: {id}")?;
            }
        }
        if let Some(after) = self.retry_after {
            write!(f, "; retry after {}s", after.as_secs())?;
        }
        Ok(())
    }
}

impl StdError for ResponseError {}

/// The request never got an answer: connection refused, reset, DNS, TLS, timeout, a CLI process
/// that could not start
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransportError {
    /// What went wrong, in words, without secrets
    pub message: String,
    /// Whether trying again may succeed (true for nearly every network failure)
    pub retryable: bool,
    /// The underlying error, kept for `source()`
    pub source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl TransportError {
    /// A retryable transport error
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            source: None,
        }
    }

    /// A transport error that trying again will not fix (e.g. the CLI is not installed)
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            source: None,
        }
    }

    /// Attaches the underlying error
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
}

impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.retryable == other.retryable
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Why a token fetch failed
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The request got no answer
    #[error("token request failed: {0}")]
    Transport(TransportError),
    /// The provider answered with an error or an unusable body
    #[error("identity provider error: {0}")]
    Response(ResponseError),
    /// The request took longer than its deadline
    #[error("token request timed out after {}ms", .after.as_millis())]
    TimedOut {
        /// How long the request was allowed
        after: Duration,
    },
    /// The token arrived but cannot be used for Redis (no `oid`, not a JWT, no lifetime)
    #[error("unusable token: {0}")]
    Token(#[from] JwtError),
    /// The response carried no lifetime at all (no `expires_in`, `expires_on` nor JWT `exp`)
    #[error("unusable token: the response has no expires_in, no expires_on and the token has no exp claim")]
    NoLifetime,
    /// The token was already expired when it arrived (a stale cache or a skewed provider clock)
    #[error("unusable token: it had already expired when it arrived (by the server's clock when the answer had a Date header, else by this host's clock: if the host clock is ahead, fix its time sync)")]
    AlreadyExpired,
}

impl FetchError {
    /// Whether the flow's own rules call this failure retryable
    ///
    /// A user predicate in [`RetryPolicy`](crate::config::RetryPolicy) can override this.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Transport(e) => e.retryable,
            FetchError::Response(e) => e.retryable,
            FetchError::TimedOut { .. } | FetchError::AlreadyExpired => true,
            FetchError::Token(_) | FetchError::NoLifetime => false,
        }
    }

    /// How long the provider asked us to wait before the next try
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Response(e) => e.retry_after,
            _ => None,
        }
    }
}

impl From<TransportError> for FetchError {
    fn from(e: TransportError) -> Self {
        FetchError::Transport(e)
    }
}

impl From<ResponseError> for FetchError {
    fn from(e: ResponseError) -> Self {
        FetchError::Response(e)
    }
}

/// How Redis answered an `AUTH` with new credentials
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReauthErrorKind {
    /// `-WRONGPASS`: the server rejected the token or username
    WrongPass,
    /// `-NOAUTH`: the server thinks the connection is unauthenticated
    NoAuth,
    /// The connection failed while re-authenticating
    Connection,
    /// Anything else
    Other,
}

/// Redis refused or failed an `AUTH` with new credentials
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("re-authentication failed ({kind:?}): {message}")]
#[non_exhaustive]
pub struct ReauthError {
    /// What kind of failure
    pub kind: ReauthErrorKind,
    /// The server's or the client's message, without secrets
    pub message: String,
}

impl ReauthError {
    /// A new re-authentication error
    pub fn new(kind: ReauthErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Classifies a Redis error reply by its code (`WRONGPASS ...`, `NOAUTH ...`)
    pub fn from_server_reply(reply: &str) -> Self {
        let kind = if reply.starts_with("WRONGPASS") {
            ReauthErrorKind::WrongPass
        } else if reply.starts_with("NOAUTH") {
            ReauthErrorKind::NoAuth
        } else {
            ReauthErrorKind::Other
        };
        Self::new(kind, reply)
    }

    /// Whether the server rejected the credentials themselves, so a fresh token may help
    pub fn is_credential_rejection(&self) -> bool {
        matches!(
            self.kind,
            ReauthErrorKind::WrongPass | ReauthErrorKind::NoAuth
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_error_message_surfaces_entra_body() {
        let err = ResponseError::new("token request rejected", false)
            .with_status(401)
            .with_entra(
                EntraErrorBody::new("invalid_client")
                    .with_description("AADSTS7000215: Invalid client secret provided.")
                    .with_codes(vec![7000215])
                    .with_correlation_id("corr-1")
                    .with_trace_id("trace-1"),
            );
        let text = FetchError::from(err).to_string();
        for needle in [
            "HTTP 401",
            "invalid_client",
            "AADSTS7000215",
            "[7000215]",
            "corr-1",
            "trace-1",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn retryability_follows_the_error_kind() {
        assert!(FetchError::from(TransportError::new("reset")).is_retryable());
        assert!(!FetchError::from(TransportError::permanent("az not found")).is_retryable());
        assert!(FetchError::TimedOut {
            after: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(!FetchError::NoLifetime.is_retryable());
        assert!(!FetchError::Token(JwtError::MissingOid).is_retryable());
        let throttled =
            ResponseError::new("throttled", true).with_retry_after(Duration::from_secs(7));
        assert_eq!(
            FetchError::from(throttled).retry_after(),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn redis_replies_are_classified() {
        assert!(
            ReauthError::from_server_reply("WRONGPASS invalid username-password pair")
                .is_credential_rejection()
        );
        assert!(
            ReauthError::from_server_reply("NOAUTH Authentication required.")
                .is_credential_rejection()
        );
        assert!(!ReauthError::from_server_reply("ERR unknown").is_credential_rejection());
    }
}
