//! Scenario and end-to-end tests shared by every redis-entraid runtime
//!
//! The runtime-independent parts live here: the end-to-end settings, the identities of a
//! running emulator as core [`TokenSource`]s (one per flow), and the report every scenario
//! prints. Each runtime has one end-to-end file under `tests/` (`blocking_e2e.rs`,
//! `tokio_e2e.rs`, `async_std_e2e.rs`); the two async ones run one workload,
//! `tests/common/async_e2e.rs`, each through a small trait of what differs.
//!
//! The provider contract is written once in `tests/provider_scenarios.rs` over
//! `tests/common/runtime.rs` (a blocking-style trait each runtime implements) and runs on all
//! three runtimes; `tests/bounded_resources.rs` and `tests/proxy_rules.rs` do the same for the
//! resource bounds and the HTTP proxy rules (the fetch-level ones once per identity backend).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::error::ConfigError;
use redis_entraid_core::identity::client_certificate::ClientCertificateFile;
use redis_entraid_core::identity::client_secret::ClientSecret;
use redis_entraid_core::identity::env::{self as vars};
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::workload::WorkloadIdentity;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_emulator::Emulator;

/// Token lifetime the emulator issues in the end-to-end scenarios
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(6);

/// How long each end-to-end scenario runs
pub const SCENARIO_DURATION: Duration = Duration::from_secs(42);

/// Settings for six-second tokens: refresh at half the lifetime (at least 2 s before expiry),
/// quick retries, requests cut at 1.5 s, so a request that hangs and its retry both fit in the
/// 3 s left before expiry
pub fn e2e_config() -> Config {
    Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .ratio(0.5)
                .lower_bound(Duration::from_secs(2))
                .min_interval(Duration::from_millis(500))
                .jitter(0.05)
                .build()
                .expect("valid refresh policy"),
        )
        .retry(
            RetryPolicy::builder()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_millis(800))
                .build()
                .expect("valid retry policy"),
        )
        .request_timeout(Duration::from_millis(1500))
        .build()
        .expect("valid config")
}

/// One identity flow under test
pub struct Flow {
    /// Its name in reports
    pub name: &'static str,
    /// How to get its tokens
    pub source: TokenSource,
}

fn env_map(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Every flow the emulator serves, configured the way users configure them: from the
/// environment variables Azure SDKs use
///
/// # Errors
/// A [`ConfigError`] when the emulator's environment does not configure a flow.
pub fn flows(emu: &Emulator, certificate_pem_file: &Path) -> Result<Vec<Flow>, ConfigError> {
    let entra = |extra: Vec<(&'static str, String)>| {
        let mut pairs = vec![
            (vars::AZURE_TENANT_ID, emu.tenant_id().to_owned()),
            (
                vars::AZURE_CLIENT_ID,
                emu.identities().service_principal.client_id.clone(),
            ),
            (vars::AZURE_AUTHORITY_HOST, emu.authority_host()),
        ];
        pairs.extend(extra);
        env_map(&pairs)
    };
    let secret = entra(vec![(
        vars::AZURE_CLIENT_SECRET,
        emu.identities()
            .service_principal
            .client_secret
            .expose()
            .to_owned(),
    )]);
    let certificate = entra(vec![(
        vars::AZURE_CLIENT_CERTIFICATE_PATH,
        certificate_pem_file.display().to_string(),
    )]);
    let workload = entra(vec![(
        vars::AZURE_FEDERATED_TOKEN_FILE,
        emu.federated_token_file().display().to_string(),
    )]);
    let imds = env_map(&[(vars::AZURE_POD_IDENTITY_AUTHORITY_HOST, emu.imds_endpoint())]);
    let app_service = env_map(&[
        (vars::IDENTITY_ENDPOINT, emu.app_service_endpoint()),
        (vars::IDENTITY_HEADER, emu.identity_header().to_owned()),
    ]);
    Ok(vec![
        Flow {
            name: "managed identity (IMDS)",
            source: TokenSource::ManagedIdentity(ManagedIdentity::detect(
                &imds,
                ManagedIdentityId::SystemAssigned,
            )?),
        },
        Flow {
            name: "managed identity (App Service)",
            source: TokenSource::ManagedIdentity(ManagedIdentity::detect(
                &app_service,
                ManagedIdentityId::SystemAssigned,
            )?),
        },
        Flow {
            name: "client secret",
            source: TokenSource::ClientSecret(ClientSecret::from_env(&secret)?),
        },
        Flow {
            name: "client certificate",
            source: TokenSource::ClientCertificateFile(ClientCertificateFile::from_env(
                &certificate,
            )?),
        },
        Flow {
            name: "workload identity",
            source: TokenSource::WorkloadIdentity(WorkloadIdentity::from_env(&workload)?),
        },
    ])
}

/// What one scenario saw
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scenario name
    pub name: String,
    /// Connections it used
    pub connections: usize,
    /// Commands that succeeded
    pub commands: u64,
    /// Commands that failed
    pub failures: u64,
    /// New tokens pushed after the first
    pub rotations: u64,
    /// Failed token fetches the provider reported (and retried)
    pub fetch_failures: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<34} connections {:>4}  commands {:>7}  failed {:>3}  rotations {:>3}  fetch failures retried {:>3}",
            self.name, self.connections, self.commands, self.failures, self.rotations, self.fetch_failures
        )
    }
}
