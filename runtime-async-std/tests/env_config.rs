//! The default chain from the process environment refuses an invalid configuration at
//! construction, as the Azure SDKs do (one test per binary: it changes the process environment)
#![allow(clippy::unwrap_used, missing_docs)]

use redis_entraid_async_std::{Provider, StartupError};

#[test]
fn an_unknown_azure_token_credentials_value_is_refused_before_any_request() {
    std::env::set_var("AZURE_TOKEN_CREDENTIALS", "not-a-credential");
    let mut spawned = false;
    let error = smol::block_on(Provider::builder().build_from_env(|driver| {
        spawned = true;
        smol::spawn(driver).detach();
    }))
    .err()
    .unwrap();
    assert!(matches!(error, StartupError::Config(_)), "{error:?}");
    assert!(
        !spawned,
        "no driver is started for an invalid configuration"
    );
    assert!(
        error.to_string().contains("AZURE_TOKEN_CREDENTIALS"),
        "{error}"
    );
}
