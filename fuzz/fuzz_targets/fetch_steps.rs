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
use redis_entraid_core::identity::{FetchContext, Step, TokenSource};
use redis_entraid_core::secret::SecretBytes;

const NAMES: [&str; 14] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_TOKEN_CREDENTIALS",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
];

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
    env: Vec<(u8, String)>,
    outcomes: Vec<Outcome>,
    wall: u32,
}

fuzz_target!(|input: Input| {
    let env: BTreeMap<String, String> = input
        .env
        .into_iter()
        .map(|(i, v)| (NAMES[usize::from(i) % NAMES.len()].to_owned(), v))
        .collect();
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
