//! `--source`: which identity flow to use, built from the process environment exactly as the
//! library's `Provider::from_env` does for the default chain

use std::collections::BTreeMap;
use std::fmt;

use clap::ValueEnum;
use redis_entraid_core::identity::authority::scope_to_resource;
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::cli::{AzureCli, AzureDeveloperCli};
use redis_entraid_core::identity::client_certificate::ClientCertificateFile;
use redis_entraid_core::identity::client_secret::ClientSecret;
use redis_entraid_core::identity::entra::EntraClient;
use redis_entraid_core::identity::env::{self, EnvSource};
use redis_entraid_core::identity::imds::Imds;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::workload::WorkloadIdentity;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::secret::SecretString;

use crate::error::CliError;

/// The identity flows the tool can use
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SourceArg {
    /// The default chain: environment, workload identity, managed identity, Azure CLI, azd
    Default,
    /// The managed identity of this host, whatever kind of host it is (detected)
    Managed,
    /// The managed identity through the VM's Instance Metadata Service
    Imds,
    /// The managed identity of App Service / Functions (IDENTITY_ENDPOINT, IDENTITY_HEADER)
    AppService,
    /// A service principal with AZURE_CLIENT_SECRET
    Secret,
    /// A service principal with AZURE_CLIENT_CERTIFICATE_PATH
    Certificate,
    /// AKS workload identity (AZURE_FEDERATED_TOKEN_FILE)
    Workload,
    /// The Azure CLI's signed-in account
    Cli,
    /// The Azure Developer CLI's signed-in account
    Azd,
}

impl fmt::Display for SourceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// The process environment, one variable at a time (never a copy of every variable: that
/// would hold secrets in strings nobody wipes)
pub(crate) struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// `name`'s value, trimmed; empty counts as unset (the library's reading)
fn var(e: &dyn EnvSource, name: &str) -> Option<String> {
    e.get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The variables the identity flows read, and whether each one's value may be shown
const VARIABLES: [(&str, bool); 17] = [
    (env::AZURE_TOKEN_CREDENTIALS, true),
    (env::AZURE_TENANT_ID, true),
    (env::AZURE_CLIENT_ID, true),
    (env::AZURE_CLIENT_SECRET, false),
    (env::AZURE_CLIENT_CERTIFICATE_PATH, true),
    (env::AZURE_CLIENT_CERTIFICATE_PASSWORD, false),
    (env::AZURE_AUTHORITY_HOST, true),
    (env::AZURE_REGIONAL_AUTHORITY_NAME, true),
    (env::AZURE_FEDERATED_TOKEN_FILE, true),
    (env::AZURE_POD_IDENTITY_AUTHORITY_HOST, true),
    (env::IDENTITY_ENDPOINT, true),
    (env::IDENTITY_HEADER, false),
    (env::IDENTITY_SERVER_THUMBPRINT, true),
    (env::IMDS_ENDPOINT, true),
    (env::MSI_ENDPOINT, true),
    (env::MSI_SECRET, false),
    ("SSL_CERT_FILE", true),
];

/// The identity variables that are set, with their values where they are not secrets
pub(crate) fn variables_seen() -> BTreeMap<&'static str, Option<String>> {
    VARIABLES
        .iter()
        .filter_map(|(name, shown)| {
            let value = ProcessEnv.get(name).filter(|v| !v.trim().is_empty())?;
            Some((*name, shown.then_some(value)))
        })
        .collect()
}

/// A chain step's name, and its source's name or why it is skipped
pub(crate) type ChainStepView = (&'static str, Result<String, String>);

/// The chain's steps as the environment configures them
pub(crate) fn chain_steps() -> Result<Vec<ChainStepView>, CliError> {
    let chain = DefaultChain::try_from_env(&ProcessEnv)
        .map_err(|e| CliError::usage("the identity configuration is invalid").cause(e))?;
    Ok(chain
        .steps()
        .iter()
        .map(|step| {
            (
                step.name,
                step.source
                    .as_ref()
                    .map(TokenSource::name)
                    .map_err(Clone::clone),
            )
        })
        .collect())
}

/// The token source `source` names, configured from the environment; `scope` replaces the
/// Redis scope (to reproduce an application's configuration)
///
/// # Errors
/// A usage error when the environment lacks what the flow needs, or `scope` cannot apply.
pub(crate) fn token_source(
    source: SourceArg,
    scope: Option<&str>,
) -> Result<TokenSource, CliError> {
    token_source_in(&ProcessEnv, source, scope)
}

/// As [`token_source`], from the environment `e` instead of the process's
///
/// # Errors
/// As [`token_source`].
pub(crate) fn token_source_in(
    e: &dyn EnvSource,
    source: SourceArg,
    scope: Option<&str>,
) -> Result<TokenSource, CliError> {
    let config = |what: &str| {
        let what = what.to_owned();
        move |err: redis_entraid_core::error::ConfigError| {
            CliError::usage(format!("cannot configure {what} from the environment")).cause(err)
        }
    };
    let managed_id = || {
        var(e, env::AZURE_CLIENT_ID)
            .map(ManagedIdentityId::ClientId)
            .unwrap_or_default()
    };
    let entra = || -> Result<EntraClient, CliError> {
        let client = EntraClient::from_env(e).map_err(config("the Entra client"))?;
        match scope {
            Some(scope) => client.with_scope(scope).map_err(config("the scope")),
            None => Ok(client),
        }
    };
    let resource = scope.map(scope_to_resource);
    let source = match source {
        SourceArg::Default => {
            if scope.is_some() {
                return Err(CliError::usage(
                    "--scope needs an explicit --source (the default chain always asks for Redis)",
                ));
            }
            TokenSource::DefaultChain(
                DefaultChain::try_from_env(e).map_err(config("the default chain"))?,
            )
        }
        SourceArg::Managed => {
            let managed =
                ManagedIdentity::detect(e, managed_id()).map_err(config("a managed identity"))?;
            TokenSource::ManagedIdentity(match resource {
                Some(r) => with_resource(managed, r),
                None => managed,
            })
        }
        SourceArg::Imds => {
            let mut imds = Imds::from_env(e, managed_id()).map_err(config("IMDS"))?;
            if let Some(r) = resource {
                imds = imds.with_resource(r);
            }
            TokenSource::ManagedIdentity(ManagedIdentity::Imds(imds))
        }
        SourceArg::AppService => {
            let mut app =
                redis_entraid_core::identity::app_service::AppService::from_env(e, managed_id())
                    .map_err(config("App Service's managed identity"))?;
            if let Some(r) = resource {
                app = app.with_resource(r);
            }
            TokenSource::ManagedIdentity(ManagedIdentity::AppService(app))
        }
        SourceArg::Secret => {
            let secret = var(e, env::AZURE_CLIENT_SECRET).ok_or_else(|| {
                CliError::usage("AZURE_CLIENT_SECRET is not set").advice(
                    "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a service principal",
                )
            })?;
            TokenSource::ClientSecret(match scope {
                None => ClientSecret::from_env(e).map_err(config("the client secret"))?,
                Some(_) => ClientSecret::new(entra()?, SecretString::new(secret))
                    .map_err(config("the client secret"))?,
            })
        }
        SourceArg::Certificate => {
            if scope.is_some() {
                return Err(CliError::usage(
                    "--scope is not supported with --source certificate",
                ));
            }
            TokenSource::ClientCertificateFile(
                ClientCertificateFile::from_env(e).map_err(config("the client certificate"))?,
            )
        }
        SourceArg::Workload => {
            let file = var(e, env::AZURE_FEDERATED_TOKEN_FILE).ok_or_else(|| {
                CliError::usage("AZURE_FEDERATED_TOKEN_FILE is not set").advice(
                    "on AKS, label the pod azure.workload.identity/use=true and give its service account the azure.workload.identity/client-id annotation",
                )
            })?;
            TokenSource::WorkloadIdentity(match scope {
                None => WorkloadIdentity::from_env(e).map_err(config("workload identity"))?,
                Some(_) => {
                    WorkloadIdentity::new(entra()?, file).map_err(config("workload identity"))?
                }
            })
        }
        SourceArg::Cli => {
            let mut cli = AzureCli::new();
            if let Some(scope) = scope {
                cli = cli.with_scope(scope).map_err(config("the scope"))?;
            }
            TokenSource::AzureCli(cli)
        }
        SourceArg::Azd => {
            let mut azd = AzureDeveloperCli::new();
            if let Some(scope) = scope {
                azd = azd.with_scope(scope).map_err(config("the scope"))?;
            }
            TokenSource::AzureDeveloperCli(azd)
        }
    };
    Ok(source)
}

fn with_resource(managed: ManagedIdentity, resource: &str) -> ManagedIdentity {
    match managed {
        ManagedIdentity::Imds(m) => ManagedIdentity::Imds(m.with_resource(resource)),
        ManagedIdentity::AppService(m) => ManagedIdentity::AppService(m.with_resource(resource)),
        ManagedIdentity::AzureArc(m) => ManagedIdentity::AzureArc(m.with_resource(resource)),
        ManagedIdentity::AzureMl(m) => ManagedIdentity::AzureMl(m.with_resource(resource)),
        ManagedIdentity::CloudShell(m) => ManagedIdentity::CloudShell(m.with_resource(resource)),
        ManagedIdentity::ServiceFabric(m) => {
            ManagedIdentity::ServiceFabric(m.with_resource(resource))
        }
        other => other,
    }
}
