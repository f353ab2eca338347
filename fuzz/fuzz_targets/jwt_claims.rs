//! Arbitrary bytes into the JWT claims reader: it must never panic, and a token it accepts
//! must round-trip its oid check without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_entraid_core::jwt::decode_claims;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(claims) = decode_claims(text) {
            let _ = claims.require_oid();
        }
    }
});
