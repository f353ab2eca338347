//! Secret strings and bytes: redacted in `Debug`, never `Display`, zeroized on drop
//!
//! Every token, client secret, certificate key and client assertion in this workspace is held in
//! one of these types, so that a stray `{:?}` in a log line or an error message cannot leak it.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// The text printed instead of a secret's contents.
pub const REDACTED: &str = "[redacted]";

/// A UTF-8 secret: redacted in `Debug`, no `Display`, zeroized on drop
///
/// ```
/// use redis_entraid_core::secret::SecretString;
/// let secret = SecretString::new("hunter2");
/// assert_eq!(format!("{secret:?}"), "SecretString([redacted])");
/// assert_eq!(secret.expose_secret(), "hunter2");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself; the name makes every read visible in review
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Length of the secret in bytes
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for SecretString {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretString")
            .field(&format_args!("{REDACTED}"))
            .finish()
    }
}

/// A binary secret (a private key, a PKCS#12 archive): redacted in `Debug`, zeroized on drop
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps a secret
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// The secret itself; the name makes every read visible in review
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length of the secret in bytes
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(secret: Vec<u8>) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({REDACTED}, {} bytes)", self.0.len())
    }
}

// Written out rather than derived: `zeroize_derive` would be the only user of `syn` 2 in an
// application whose other macros moved on, two crates for four short impls.
impl Zeroize for SecretString {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SecretString {}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let text = SecretString::new("s3cr3t-value");
        let bytes = SecretBytes::new(b"s3cr3t-bytes".to_vec());
        let printed = format!("{text:?} {bytes:?} {text:#?} {bytes:#?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains(REDACTED));
    }

    #[test]
    fn zeroize_clears_the_contents() {
        let mut text = SecretString::new("s3cr3t");
        text.zeroize();
        assert!(text.is_empty());
        let mut bytes = SecretBytes::new(vec![1, 2, 3]);
        bytes.zeroize();
        assert!(bytes.is_empty());
    }

    #[test]
    fn secret_types_implement_zeroize_on_drop() {
        fn assert_zeroize_on_drop<T: ZeroizeOnDrop>() {}
        assert_zeroize_on_drop::<SecretString>();
        assert_zeroize_on_drop::<SecretBytes>();
    }
}
