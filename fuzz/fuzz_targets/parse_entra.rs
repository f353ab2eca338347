//! Arbitrary responses into the Entra token endpoint parser; errors must also format.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use redis_entraid_core::identity::entra::parse_response;

fuzz_target!(|input: common::RawResponse| {
    if let Err(error) = parse_response(&input.to_http()) {
        let _ = error.to_string();
    }
});
