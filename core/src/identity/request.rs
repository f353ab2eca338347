//! [`IdentityRequest`]: a token request whose `Debug` never shows a secret

use std::fmt;
use std::ops::{Deref, DerefMut};

use zeroize::Zeroize;

/// One identity request, as a runtime or a custom HTTP client sends it
///
/// A plain [`http::Request<Vec<u8>>`] inside, reachable through [`Deref`] (`uri()`,
/// `headers()`, `body()`, ...), [`into_inner`](Self::into_inner) and
/// [`into_parts`](Self::into_parts). What this wrapper adds:
///
/// - `Debug` shows the method, the URI and the header names but no body (a form with
///   `client_secret=` or `client_assertion=`) and no value of a header marked sensitive
///   (`X-IDENTITY-HEADER`, `secret`, `Authorization`, ...). `http::Request`'s own `Debug`
///   prints the body as a byte list, so `{:?}` of `*request` (or of `into_inner()`) shows
///   the secret: do not log those.
/// - The body is zeroized when the wrapper is dropped without being taken apart.
///
/// ```
/// use redis_entraid_core::identity::client_secret::ClientSecret;
/// use redis_entraid_core::identity::entra::EntraClient;
/// use redis_entraid_core::secret::SecretString;
///
/// let client = EntraClient::new("tenant-id", "client-id").unwrap();
/// let flow = ClientSecret::new(client, SecretString::new("s3cr~t".to_owned())).unwrap();
/// let request = flow.build_request().unwrap();
/// assert!(!format!("{request:?}").contains("s3cr"));
/// let (parts, body) = request.into_parts(); // what an HTTP client sends
/// assert_eq!(parts.method, http::Method::POST);
/// assert!(!body.is_empty());
/// ```
pub struct IdentityRequest(http::Request<Vec<u8>>);

impl IdentityRequest {
    /// Wraps a request (for custom flows and tests)
    pub fn new(request: http::Request<Vec<u8>>) -> Self {
        Self(request)
    }

    /// The request itself, to hand to an HTTP client; its body is then the caller's to wipe
    pub fn into_inner(mut self) -> http::Request<Vec<u8>> {
        std::mem::replace(&mut self.0, http::Request::new(Vec::new()))
    }

    /// The request's head and body, to hand to an HTTP client
    pub fn into_parts(self) -> (http::request::Parts, Vec<u8>) {
        self.into_inner().into_parts()
    }
}

impl From<http::Request<Vec<u8>>> for IdentityRequest {
    fn from(request: http::Request<Vec<u8>>) -> Self {
        Self(request)
    }
}

impl Deref for IdentityRequest {
    type Target = http::Request<Vec<u8>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for IdentityRequest {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for IdentityRequest {
    fn drop(&mut self) {
        self.0.body_mut().zeroize();
    }
}

impl fmt::Debug for IdentityRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are shown only when not marked sensitive; `http`'s `HeaderValue`
        // Debug already prints `Sensitive` for those, so the map can be printed as is.
        f.debug_struct("IdentityRequest")
            .field("method", self.0.method())
            .field("uri", self.0.uri())
            .field("headers", self.0.headers())
            .field("body", &format_args!("<{} bytes>", self.0.body().len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_body_and_sensitive_header_values() {
        let mut value = http::HeaderValue::from_static("header-secret");
        value.set_sensitive(true);
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("https://login.example/t/oauth2/v2.0/token")
            .header("x-identity-header", value)
            .header("metadata", "true")
            .body(b"client_secret=body-secret".to_vec())
            .unwrap();
        let shown = format!("{:?}", IdentityRequest::new(request));
        assert!(!shown.contains("body-secret"), "{shown}");
        assert!(!shown.contains("header-secret"), "{shown}");
        // As a byte list too: `Debug` of a `Vec<u8>`
        assert!(!shown.contains("98, 111, 100, 121"), "{shown}");
        assert!(
            shown.contains("metadata") && shown.contains("<25 bytes>"),
            "{shown}"
        );
    }

    #[test]
    fn into_parts_hands_out_the_whole_request() {
        let request = IdentityRequest::new(http::Request::new(b"a=b".to_vec()));
        let (_, body) = request.into_parts();
        assert_eq!(body, b"a=b");
    }
}
