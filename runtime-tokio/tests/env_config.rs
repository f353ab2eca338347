//! The default chain from the process environment refuses an invalid configuration at
//! construction, as the Azure SDKs do (one test per binary: it changes the process environment)
#![allow(clippy::unwrap_used, missing_docs)]

use redis_entraid_tokio::{Provider, Startup, StartupError};

#[tokio::test]
async fn an_unknown_azure_token_credentials_value_is_refused_before_any_request() {
    std::env::set_var("AZURE_TOKEN_CREDENTIALS", "not-a-credential");
    let error = Provider::builder()
        .startup(Startup::Lazy)
        .build_from_env()
        .await
        .err()
        .unwrap();
    assert!(matches!(error, StartupError::Config(_)), "{error:?}");
    assert!(
        error.to_string().contains("AZURE_TOKEN_CREDENTIALS"),
        "the message names the variable: {error}"
    );
}
