//! Drives a token fetch (the default chain from an arbitrary environment, or a single flow) with
//! arbitrary step outcomes: it must never panic, must end within the given outcomes or fail,
//! and must never return a step after `Done`.
#![no_main]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::cli::CommandOutput;
use redis_entraid_core::identity::env;
use redis_entraid_core::identity::{FetchContext, Step, TokenSource};
use redis_entraid_core::secret::SecretBytes;

/// Every variable the chain reads (`redis_entraid_core::identity::env`); a test in this file
/// cannot see the list, so keep it in step when a variable is added there
const NAMES: [&str; 21] = [
    env::AZURE_TENANT_ID,
    env::AZURE_CLIENT_ID,
    env::AZURE_CLIENT_SECRET,
    env::AZURE_CLIENT_CERTIFICATE_PATH,
    env::AZURE_CLIENT_CERTIFICATE_PASSWORD,
    env::AZURE_CLIENT_SEND_CERTIFICATE_CHAIN,
    env::AZURE_REGIONAL_AUTHORITY_NAME,
    env::REGION_NAME,
    env::AZURE_AUTHORITY_HOST,
    env::AZURE_FEDERATED_TOKEN_FILE,
    env::AZURE_POD_IDENTITY_AUTHORITY_HOST,
    env::AZURE_TOKEN_CREDENTIALS,
    env::IDENTITY_ENDPOINT,
    env::IDENTITY_HEADER,
    env::IDENTITY_SERVER_THUMBPRINT,
    env::IDENTITY_API_VERSION,
    env::IMDS_ENDPOINT,
    env::MSI_ENDPOINT,
    env::MSI_SECRET,
    env::DEFAULT_IDENTITY_CLIENT_ID,
    env::PROGRAM_DATA,
];

/// Plausible values, so short runs reach the configured paths and not only the refusals
const VALUES: [&str; 16] = [
    "72f988bf-0000-0000-0000-000000000000",
    "11111111-2222-3333-4444-555555555555",
    "https://localhost:2377/metadata/identity/oauth2/token",
    "http://127.0.0.1:40342",
    "http://localhost:50342/oauth2/token",
    "https://login.microsoftonline.us",
    "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
    "/var/run/secrets/azure/tokens/azure-identity-token",
    "/etc/ssl/client.pem",
    "dev",
    "prod",
    "ManagedIdentityCredential",
    "TryAutoDetect",
    "westus2",
    "1",
    r"C:\ProgramData",
];

#[derive(Arbitrary, Debug)]
enum Value {
    Known(u8),
    Any(String),
}

impl Value {
    fn text(self) -> String {
        match self {
            Value::Known(i) => VALUES[usize::from(i) % VALUES.len()].to_owned(),
            Value::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Outcome {
    Http(common::RawResponse),
    Transport,
    TimedOut,
    File(Vec<u8>),
    Command {
        status: Option<i32>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    env: Vec<(u8, Value)>,
    outcomes: Vec<Outcome>,
    wall: u32,
}

fuzz_target!(|input: Input| {
    let env: BTreeMap<String, String> = input
        .env
        .into_iter()
        .map(|(i, v)| (NAMES[usize::from(i) % NAMES.len()].to_owned(), v.text()))
        .collect();
    // The fallible constructor must agree with the infallible one whenever it succeeds
    if let Ok(chain) = DefaultChain::try_from_env(&env) {
        assert_eq!(chain, DefaultChain::from_env(&env));
    }
    let source = TokenSource::DefaultChain(DefaultChain::from_env(&env));
    let ctx = FetchContext::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(input.wall)),
        [7; 32],
    );
    let mut fetch = source.fetch(ctx);
    let mut step = fetch.start();
    let mut outcomes = input.outcomes.into_iter();
    loop {
        let current = match step {
            Ok(Step::Done(_)) | Err(_) => break,
            Ok(s) => s,
        };
        let Some(outcome) = outcomes.next() else {
            break;
        };
        step = match (current, outcome) {
            (Step::CallCustom(call), _) => fetch.on_custom_result(call.call()),
            (_, Outcome::Http(raw)) => fetch.on_http_response(&raw.to_http()),
            (_, Outcome::Transport) => fetch.on_transport_error(TransportError::new("x").into()),
            (_, Outcome::TimedOut) => fetch.on_transport_error(FetchError::TimedOut {
                after: Duration::from_secs(1),
            }),
            (_, Outcome::File(bytes)) => fetch.on_file(Ok(SecretBytes::new(bytes))),
            (
                _,
                Outcome::Command {
                    status,
                    stdout,
                    stderr,
                },
            ) => fetch.on_command_output(&CommandOutput::new(status, stdout, stderr)),
        };
        if let Err(error) = &step {
            let _ = error.to_string();
        }
    }
});
