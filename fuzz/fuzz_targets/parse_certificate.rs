//! Arbitrary bytes into the certificate loader (PEM splitting, PKCS#1/PKCS#8 keys through ring,
//! the DER walk to the certificate key, PKCS#12 with feature `pkcs12`):
//! it must never panic, whatever the file holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_entraid_core::identity::client_certificate::CertificateCredential;
use redis_entraid_core::secret::{SecretBytes, SecretString};

fuzz_target!(|data: &[u8]| {
    let bytes = SecretBytes::new(data.to_vec());
    let _ = CertificateCredential::from_pem(&bytes);
    // "pw" opens the committed seed-password-pw.p12; no password tries the empty one
    let _ = CertificateCredential::from_bytes(&bytes, Some(&SecretString::new("pw")));
    let _ = CertificateCredential::from_bytes(&bytes, None);
});
