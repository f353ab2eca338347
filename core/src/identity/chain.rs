//! The default chain, like `DefaultAzureCredential`: environment (secret, certificate) ->
//! workload identity -> managed identity -> Azure CLI -> Azure Developer CLI
//!
//! [`DefaultChain::from_env`] decides, from an explicit environment map, which steps are
//! configured and why the others are skipped. A fetch then tries the configured steps in order:
//!
//! - a step that is **unavailable** passes to the next: not configured, no answer (transport
//!   error, timeout), the IMDS probe found nothing, the managed-identity endpoint has no such
//!   identity (a non-retryable error), a CLI that is missing, not logged in or failing;
//! - a step that was **reached and failed** stops the chain with its own error: Entra rejected
//!   the secret, certificate or federated token, or a managed-identity endpoint failed
//!   transiently (retryable; the machine retries the whole chain);
//! - when every step is unavailable, the fetch fails with **one** error listing each step and
//!   why it did not produce a token.
//!
//! Managed identity inside the chain starts with the IMDS probe (a request without `Metadata`,
//! 1 s timeout, no retries; any HTTP answer means IMDS is there) unless
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` is set or `AZURE_TOKEN_CREDENTIALS` names managed identity
//! alone. As in the Azure SDKs, `AZURE_CLIENT_ID` also selects the user-assigned managed identity.
//! `AZURE_TOKEN_CREDENTIALS` restricts the chain: `dev` (CLIs), `prod` (environment, workload
//! identity, managed identity) or one of `environmentcredential`, `workloadidentitycredential`,
//! `managedidentitycredential`, `azureclicredential`, `azuredeveloperclicredential`.
//! After a success, [`Fetch::winner`](super::Fetch::winner) names the source to reuse.
//! The environment and workload-identity steps honour `AZURE_REGIONAL_AUTHORITY_NAME`
//! ([`EntraClient::from_env`](super::entra::EntraClient::from_env)).
//!
//! # Where this chain deliberately differs from `DefaultAzureCredential`
//!
//! Python's azure-identity and Go's azidentity disagree in places; each case below names what
//! they do, what we do, and why.
//!
//! - **`IDENTITY_ENDPOINT` alone** (no `IDENTITY_HEADER`, no `IMDS_ENDPOINT`). Both SDKs fall
//!   back to IMDS (Go first looks for the Arc agent's files). We skip managed identity, and
//!   the final error says why (an explicit [`ManagedIdentity::detect`] fails with a
//!   [`ConfigError`] on `IDENTITY_ENDPOINT`). The variable marks an App Service, Service Fabric or Arc host whose
//!   configuration is broken; asking IMDS there would authenticate as whatever identity the
//!   machine underneath has (on AKS, the node's), a principal the operator did not choose and
//!   that Redis would then see. A clear "fix the host" beats a token for the wrong identity.
//! - **`IDENTITY_ENDPOINT`, `IMDS_ENDPOINT` and `MSI_ENDPOINT` all set** (no `IDENTITY_HEADER`).
//!   Python picks Azure Arc; Go (MSAL-Go's source order) picks Cloud Shell, or Azure ML with
//!   `MSI_SECRET`. We follow Python: `IDENTITY_ENDPOINT` plus `IMDS_ENDPOINT` is what the Arc
//!   agent exports, while `MSI_ENDPOINT` alone is the weakest signal (a leftover of the legacy
//!   App Service protocol), and one order for every check keeps [`ManagedIdentity::detect`]
//!   and the chain in agreement.
//! - **IMDS answers 400 while `AZURE_CLIENT_ID` selects a user-assigned identity.** Python
//!   treats every IMDS 400 as "unavailable" and moves on; Go halts the chain with an
//!   authentication error. We follow Go: the environment named an identity, the VM does not
//!   have it, and moving on to the CLIs could silently authenticate as a developer instead.
//!   The chain stops with IMDS's own message (not retryable). Without `AZURE_CLIENT_ID` a 400
//!   still means "no identity on this VM" and the chain moves on, as in both SDKs.
//! - **An invalid `AZURE_TOKEN_CREDENTIALS`** is an error when the credential is constructed in
//!   both SDKs. [`DefaultChain::try_from_env`] does the same (a `ConfigError` on
//!   `AZURE_TOKEN_CREDENTIALS`) and is the constructor to use; [`DefaultChain::from_env`] stays
//!   infallible for existing callers, and then every step is skipped with the reason, so the
//!   first fetch fails with it.
//! - **A 408 from any managed-identity host** is retryable, as in MSAL and azure-core: inside
//!   the chain it stops the fetch so the machine retries, rather than falling through to the
//!   CLIs.
//! - **No IMDS region probing** for `AZURE_REGIONAL_AUTHORITY_NAME=TryAutoDetect`: only
//!   `REGION_NAME` is read (MSAL's first source); without it the global authority is used.
//!   MSAL's IMDS fallback is an I/O step before every confidential-client fetch for a value that
//!   rarely exists off Azure VMs.

use crate::error::{ConfigError, FetchError, ResponseError};
use crate::identity::cli::{AzureCli, AzureDeveloperCli};
use crate::identity::client_secret::ClientSecret;
use crate::identity::env::{self, EnvSource};
use crate::identity::managed::{ManagedIdentity, ManagedIdentityId};
use crate::identity::source::{FetchContext, Outcome, SingleFetch, Step, TokenSource};
use crate::identity::workload::WorkloadIdentity;

/// One step of the chain: a configured source, or the reason it is skipped
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ChainStep {
    /// The step's name (`environment`, `workload identity`, `managed identity`, `Azure CLI`,
    /// `Azure Developer CLI`)
    pub name: &'static str,
    /// The source, or why this step is skipped
    pub source: Result<TokenSource, String>,
    /// Probe IMDS before asking it for a token
    pub probe: bool,
}

/// The default chain
#[derive(Clone, Debug, PartialEq)]
pub struct DefaultChain {
    steps: Vec<ChainStep>,
}

const ENVIRONMENT: &str = "environment";
const WORKLOAD: &str = "workload identity";
const MANAGED: &str = "managed identity";
const CLI: &str = "Azure CLI";
const AZD: &str = "Azure Developer CLI";

impl DefaultChain {
    /// The chain as the environment configures it, refusing an invalid
    /// `AZURE_TOKEN_CREDENTIALS` at once, as the Azure SDKs do
    ///
    /// # Errors
    /// A [`ConfigError`] on `AZURE_TOKEN_CREDENTIALS` when it is set to something other than
    /// `dev`, `prod` or one credential name (case-insensitive).
    pub fn try_from_env(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        if let Some(value) = env::var(env, env::AZURE_TOKEN_CREDENTIALS) {
            if !TOKEN_CREDENTIALS.contains(&value.to_ascii_lowercase().as_str()) {
                return Err(ConfigError::new(
                    env::AZURE_TOKEN_CREDENTIALS,
                    invalid_restriction(&value),
                ));
            }
        }
        Ok(Self::from_env(env))
    }

    /// The chain as the environment configures it
    ///
    /// Infallible: an invalid `AZURE_TOKEN_CREDENTIALS` skips every step with the reason, so the
    /// first fetch fails. Prefer [`DefaultChain::try_from_env`], which fails here instead.
    pub fn from_env(env: &dyn EnvSource) -> Self {
        let restriction =
            env::var(env, env::AZURE_TOKEN_CREDENTIALS).map(|v| v.to_ascii_lowercase());
        let allowed = |name: &str| -> Result<(), String> {
            let Some(value) = restriction.as_deref() else {
                return Ok(());
            };
            let ok = match value {
                "dev" => matches!(name, CLI | AZD),
                "prod" => matches!(name, ENVIRONMENT | WORKLOAD | MANAGED),
                "environmentcredential" => name == ENVIRONMENT,
                "workloadidentitycredential" => name == WORKLOAD,
                "managedidentitycredential" => name == MANAGED,
                "azureclicredential" => name == CLI,
                "azuredeveloperclicredential" => name == AZD,
                other => return Err(invalid_restriction(other)),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("excluded by AZURE_TOKEN_CREDENTIALS={value}"))
            }
        };
        let step =
            |name: &'static str, build: &dyn Fn() -> Result<TokenSource, String>| ChainStep {
                name,
                source: allowed(name).and_then(|()| build()),
                probe: false,
            };
        let environment = step(ENVIRONMENT, &|| environment_source(env));
        let workload = step(WORKLOAD, &|| {
            if env::var(env, env::AZURE_FEDERATED_TOKEN_FILE).is_none() {
                return Err("AZURE_FEDERATED_TOKEN_FILE is not set".to_owned());
            }
            WorkloadIdentity::from_env(env)
                .map(TokenSource::WorkloadIdentity)
                .map_err(|e| e.to_string())
        });
        let mut managed = step(MANAGED, &|| {
            let id = env::var(env, env::AZURE_CLIENT_ID)
                .map(ManagedIdentityId::ClientId)
                .unwrap_or_default();
            ManagedIdentity::detect(env, id)
                .map(TokenSource::ManagedIdentity)
                .map_err(|e| e.to_string())
        });
        managed.probe = matches!(
            managed.source,
            Ok(TokenSource::ManagedIdentity(ManagedIdentity::Imds(_)))
        ) && env::var(env, env::AZURE_POD_IDENTITY_AUTHORITY_HOST).is_none()
            && restriction.as_deref() != Some("managedidentitycredential");
        let cli = step(CLI, &|| Ok(TokenSource::AzureCli(AzureCli::new())));
        let azd = step(AZD, &|| {
            Ok(TokenSource::AzureDeveloperCli(AzureDeveloperCli::new()))
        });
        Self {
            steps: vec![environment, workload, managed, cli, azd],
        }
    }

    /// The steps, in order
    pub fn steps(&self) -> &[ChainStep] {
        &self.steps
    }
}

/// The values `AZURE_TOKEN_CREDENTIALS` accepts, lower-cased
const TOKEN_CREDENTIALS: [&str; 7] = [
    "dev",
    "prod",
    "environmentcredential",
    "workloadidentitycredential",
    "managedidentitycredential",
    "azureclicredential",
    "azuredeveloperclicredential",
];

fn invalid_restriction(value: &str) -> String {
    format!(
        "AZURE_TOKEN_CREDENTIALS={} is not one of {}",
        crate::identity::common::clip(value),
        TOKEN_CREDENTIALS.join(", ")
    )
}

fn environment_source(env: &dyn EnvSource) -> Result<TokenSource, String> {
    if env::var(env, env::AZURE_CLIENT_SECRET).is_some() {
        return ClientSecret::from_env(env)
            .map(TokenSource::ClientSecret)
            .map_err(|e| e.to_string());
    }
    if env::var(env, env::AZURE_CLIENT_CERTIFICATE_PATH).is_some() {
        #[cfg(feature = "certificate")]
        return crate::identity::client_certificate::ClientCertificateFile::from_env(env)
            .map(TokenSource::ClientCertificateFile)
            .map_err(|e| e.to_string());
        #[cfg(not(feature = "certificate"))]
        return Err(
            "AZURE_CLIENT_CERTIFICATE_PATH is set but this build lacks the `certificate` feature"
                .to_owned(),
        );
    }
    Err("neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set (each needs AZURE_TENANT_ID and AZURE_CLIENT_ID too)".to_owned())
}

/// A chain fetch in progress
#[derive(Debug)]
pub(crate) struct ChainFetch {
    chain: DefaultChain,
    next: usize,
    current: Option<(&'static str, SingleFetch)>,
    report: Vec<String>,
    winner: Option<TokenSource>,
}

impl ChainFetch {
    pub(crate) fn new(chain: DefaultChain) -> Self {
        Self {
            chain,
            next: 0,
            current: None,
            report: Vec::new(),
            winner: None,
        }
    }

    pub(crate) fn winner(&self) -> Option<&TokenSource> {
        self.winner.as_ref()
    }

    pub(crate) fn start(&mut self, ctx: &FetchContext) -> Result<Step, FetchError> {
        self.advance(ctx)
    }

    fn advance(&mut self, ctx: &FetchContext) -> Result<Step, FetchError> {
        while let Some(step) = self.chain.steps.get(self.next).cloned() {
            self.next += 1;
            match step.source {
                Err(reason) => self
                    .report
                    .push(format!("{}: skipped: {reason}", step.name)),
                Ok(source) => {
                    let mut single = SingleFetch::new(source, step.probe);
                    let started = single.start(ctx);
                    self.current = Some((step.name, single));
                    match started {
                        Ok(next) => return Ok(self.note_done(next)),
                        Err(error) => {
                            if let Some(stop) = self.failed(error) {
                                return Err(stop);
                            }
                        }
                    }
                }
            }
        }
        Err(self.nothing_worked())
    }

    pub(crate) fn feed(
        &mut self,
        outcome: Outcome<'_>,
        ctx: &FetchContext,
    ) -> Result<Step, FetchError> {
        let Some((_, single)) = self.current.as_mut() else {
            return Err(ResponseError::new(
                "the runtime fed an outcome to a chain with no step in progress",
                false,
            )
            .into());
        };
        match single.feed(outcome, ctx) {
            Ok(step) => Ok(self.note_done(step)),
            Err(error) => match self.failed(error) {
                Some(stop) => Err(stop),
                None => self.advance(ctx),
            },
        }
    }

    fn note_done(&mut self, step: Step) -> Step {
        if matches!(step, Step::Done(_)) {
            self.winner = self.current.as_ref().map(|(_, s)| s.source.clone());
        }
        step
    }

    /// Records a failure; `Some` when it stops the chain
    fn failed(&mut self, error: FetchError) -> Option<FetchError> {
        let (name, single) = self.current.take()?;
        let unavailable = match (&single.source, &error) {
            (_, FetchError::Transport(_) | FetchError::TimedOut { .. }) => true,
            (TokenSource::AzureCli(_) | TokenSource::AzureDeveloperCli(_), _) => true,
            // Go's DefaultAzureCredential: IMDS refusing an identity the environment named
            // (`AZURE_CLIENT_ID`) halts the chain, because the operator expected that identity;
            // falling through could authenticate as a CLI user instead. See the module docs.
            (
                TokenSource::ManagedIdentity(ManagedIdentity::Imds(imds)),
                FetchError::Response(e),
            ) if e.status == Some(400) && !imds.identity().is_system_assigned() => false,
            (TokenSource::ManagedIdentity(_), FetchError::Response(e)) => !e.retryable,
            _ => false,
        };
        if unavailable {
            self.report.push(format!(
                "{name} ({}): unavailable: {error}",
                single.source.name()
            ));
            None
        } else {
            Some(match error {
                FetchError::Response(mut e) => {
                    e.message = format!(
                        "default chain stopped at {name} ({}): {}",
                        single.source.name(),
                        e.message
                    );
                    FetchError::Response(e)
                }
                other => other,
            })
        }
    }

    fn nothing_worked(&self) -> FetchError {
        let mut message = String::from(
            "no credential in the default chain produced a token; configure one of them:",
        );
        for line in &self.report {
            message.push_str("\n  - ");
            message.push_str(line);
        }
        ResponseError::new(message, false).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TransportError;
    use crate::identity::cli::CommandOutput;
    use crate::identity::imds::tests::response;
    use crate::identity::{Fetch, FetchContext};
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn chain(vars: &[(&'static str, &'static str)]) -> DefaultChain {
        let map: BTreeMap<&str, &str> = vars.iter().copied().collect();
        DefaultChain::from_env(&map)
    }

    fn ctx() -> FetchContext {
        FetchContext::new(SystemTime::UNIX_EPOCH, [7; 32])
    }

    fn names(chain: &DefaultChain) -> Vec<(&'static str, Result<String, String>)> {
        chain
            .steps()
            .iter()
            .map(|s| {
                (
                    s.name,
                    s.source
                        .as_ref()
                        .map(TokenSource::name)
                        .map_err(Clone::clone),
                )
            })
            .collect()
    }

    #[test]
    fn empty_environment_configures_managed_identity_and_the_clis() {
        let steps = names(&chain(&[]));
        assert_eq!(steps.len(), 5);
        assert!(steps[0]
            .1
            .as_ref()
            .is_err_and(|r| r.contains("AZURE_CLIENT_SECRET")));
        assert!(steps[1]
            .1
            .as_ref()
            .is_err_and(|r| r.contains("AZURE_FEDERATED_TOKEN_FILE")));
        assert_eq!(steps[2].1, Ok("managed identity (IMDS)".to_owned()));
        assert_eq!(steps[3].1, Ok("Azure CLI".to_owned()));
        assert_eq!(steps[4].1, Ok("Azure Developer CLI".to_owned()));
        assert!(chain(&[]).steps()[2].probe);
    }

    #[test]
    fn environment_prefers_secret_then_certificate_and_client_id_selects_the_managed_identity() {
        let base = [(env::AZURE_TENANT_ID, "t1"), (env::AZURE_CLIENT_ID, "c1")];
        let mut secret = base.to_vec();
        secret.push((env::AZURE_CLIENT_SECRET, "s"));
        secret.push((env::AZURE_CLIENT_CERTIFICATE_PATH, "/c.pem"));
        assert_eq!(names(&chain(&secret))[0].1, Ok("client secret".to_owned()));
        let mut cert = base.to_vec();
        cert.push((env::AZURE_CLIENT_CERTIFICATE_PATH, "/c.pem"));
        #[cfg(feature = "certificate")]
        assert_eq!(
            names(&chain(&cert))[0].1,
            Ok("client certificate".to_owned())
        );
        #[cfg(not(feature = "certificate"))]
        assert!(names(&chain(&cert))[0]
            .1
            .as_ref()
            .is_err_and(|r| r.contains("`certificate` feature")));
        let managed = chain(&base).steps()[2].source.clone();
        let Ok(TokenSource::ManagedIdentity(ManagedIdentity::Imds(imds))) = managed else {
            panic!("{managed:?}")
        };
        assert_eq!(imds.identity(), &ManagedIdentityId::ClientId("c1".into()));
        let mut common = secret.clone();
        common[0] = (env::AZURE_TENANT_ID, "common");
        assert!(names(&chain(&common))[0]
            .1
            .as_ref()
            .is_err_and(|r| r.contains("AADSTS50059")));
    }

    #[test]
    fn token_credentials_restricts_the_chain() {
        let dev = names(&chain(&[(env::AZURE_TOKEN_CREDENTIALS, "dev")]));
        assert!(dev[2].1.as_ref().is_err_and(|r| r.contains("excluded")));
        assert!(dev[3].1.is_ok() && dev[4].1.is_ok());
        let prod = names(&chain(&[(env::AZURE_TOKEN_CREDENTIALS, "prod")]));
        assert!(prod[2].1.is_ok() && prod[3].1.is_err());
        let only_mi = chain(&[(env::AZURE_TOKEN_CREDENTIALS, "ManagedIdentityCredential")]);
        assert!(only_mi.steps()[2].source.is_ok() && !only_mi.steps()[2].probe);
        let bogus = names(&chain(&[(env::AZURE_TOKEN_CREDENTIALS, "bogus")]));
        assert!(bogus
            .iter()
            .all(|(_, s)| s.as_ref().is_err_and(|r| r.contains("not one of"))));
    }

    #[test]
    fn nothing_worked_lists_every_step_and_why() {
        let source = TokenSource::DefaultChain(chain(&[]));
        let mut fetch: Fetch = source.fetch(ctx());
        let probe = fetch.start();
        let Ok(Step::Http { request, meta }) = probe else {
            panic!("{probe:?}")
        };
        assert!(meta.probe && meta.local_endpoint && request.headers().get("metadata").is_none());
        assert_eq!(meta.timeout, Some(std::time::Duration::from_secs(1)));
        let next = fetch.on_transport_error(TransportError::new("connect timeout").into());
        let Ok(Step::RunCommand(az)) = next else {
            panic!("{next:?}")
        };
        assert_eq!(az.program, "az");
        let next = fetch.on_command_output(&CommandOutput::not_found());
        let Ok(Step::RunCommand(azd)) = next else {
            panic!("{next:?}")
        };
        assert_eq!(azd.program, "azd");
        let last = fetch.on_command_output(&CommandOutput::new(
            Some(1),
            Vec::new(),
            b"ERROR: not logged in, run `azd auth login` to login".to_vec(),
        ));
        let text = last
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        for needle in [
            "environment: skipped: neither AZURE_CLIENT_SECRET",
            "workload identity: skipped: AZURE_FEDERATED_TOKEN_FILE is not set",
            "managed identity (managed identity (IMDS)): unavailable: ",
            "did not answer the probe",
            "Azure CLI (Azure CLI): unavailable: ",
            "not installed",
            "Azure Developer CLI (Azure Developer CLI): unavailable: ",
            "azd auth login",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(last.is_err_and(|e| !e.is_retryable()));
        assert!(fetch.winner().is_none());
    }

    #[test]
    fn probe_success_leads_to_the_real_imds_request_and_the_winner_is_kept() {
        let source = TokenSource::DefaultChain(chain(&[]));
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        let next = fetch.on_http_response(&response(400, r#"{"error":"bad_request_102"}"#));
        let Ok(Step::Http { request, meta }) = next else {
            panic!("{next:?}")
        };
        assert!(!meta.probe);
        assert_eq!(request.headers()["metadata"], "true");
        let done = fetch.on_http_response(&response(
            200,
            r#"{"access_token":"t","expires_in":"86399","expires_on":"1767225599","token_type":"Bearer"}"#,
        ));
        assert!(matches!(done, Ok(Step::Done(ref t)) if t.expires_in == Some(86399)));
        assert!(matches!(
            fetch.winner(),
            Some(TokenSource::ManagedIdentity(_))
        ));
    }

    #[test]
    fn entra_rejection_stops_the_chain_with_its_own_error() {
        let source = TokenSource::DefaultChain(chain(&[
            (env::AZURE_TENANT_ID, "t1"),
            (env::AZURE_CLIENT_ID, "c1"),
            (env::AZURE_CLIENT_SECRET, "wrong"),
        ]));
        let mut fetch = source.fetch(ctx());
        let first = fetch.start();
        let Ok(Step::Http { request, meta }) = first else {
            panic!("{first:?}")
        };
        assert!(!meta.local_endpoint && !meta.allow_plain_http);
        assert!(request
            .uri()
            .to_string()
            .starts_with("https://login.microsoftonline.com/t1/"));
        let stop = fetch.on_http_response(&response(
            401,
            r#"{"error":"invalid_client","error_codes":[7000215],"correlation_id":"corr"}"#,
        ));
        let text = stop
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            text.contains("stopped at environment")
                && text.contains("invalid_client")
                && text.contains("corr"),
            "{text}"
        );
        assert!(stop.is_err_and(|e| !e.is_retryable()));
    }

    #[test]
    fn retryable_managed_identity_failure_stops_so_the_machine_retries() {
        let source = TokenSource::DefaultChain(chain(&[]));
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        assert!(fetch.on_http_response(&response(400, "")).is_ok());
        let busy = fetch.on_http_response(&response(503, ""));
        assert!(busy.is_err_and(|e| e.is_retryable()));
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        assert!(fetch.on_http_response(&response(400, "")).is_ok());
        let no_identity = fetch.on_http_response(&response(
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
        ));
        assert!(
            matches!(no_identity, Ok(Step::RunCommand(_))),
            "{no_identity:?}"
        );
    }

    #[test]
    fn request_timeout_from_any_managed_identity_host_stops_the_chain_so_the_machine_retries() {
        let fabric: &[(&str, &str)] = &[
            (env::IDENTITY_ENDPOINT, "https://localhost:2377/token"),
            (env::IDENTITY_HEADER, "h"),
            (
                env::IDENTITY_SERVER_THUMBPRINT,
                "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
            ),
        ];
        let app: &[(&str, &str)] = &[
            (env::IDENTITY_ENDPOINT, "http://localhost:8081/msi/token"),
            (env::IDENTITY_HEADER, "h"),
        ];
        let ml: &[(&str, &str)] = &[
            (env::MSI_ENDPOINT, "http://127.0.0.1:46808/MSI/auth"),
            (env::MSI_SECRET, "s"),
        ];
        let shell: &[(&str, &str)] = &[(env::MSI_ENDPOINT, "http://localhost:50342/oauth2/token")];
        for vars in [fabric, app, ml, shell] {
            let map: BTreeMap<&str, &str> = vars.iter().copied().collect();
            let source = TokenSource::DefaultChain(DefaultChain::from_env(&map));
            let mut fetch = source.fetch(ctx());
            assert!(matches!(fetch.start(), Ok(Step::Http { .. })), "{vars:?}");
            let timeout = fetch.on_http_response(&response(408, ""));
            assert!(timeout.is_err_and(|e| e.is_retryable()), "{vars:?}");
        }
        // IMDS (after its probe) and Arc already retried 408; pinned here for the chain too
        let source = TokenSource::DefaultChain(chain(&[]));
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        assert!(fetch.on_http_response(&response(400, "")).is_ok());
        let timeout = fetch.on_http_response(&response(408, ""));
        assert!(timeout.is_err_and(|e| e.is_retryable()));
    }

    #[test]
    fn imds_refusing_the_client_id_identity_stops_the_chain() {
        let source = TokenSource::DefaultChain(chain(&[(env::AZURE_CLIENT_ID, "c1")]));
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        assert!(fetch.on_http_response(&response(400, "")).is_ok());
        let refused = fetch.on_http_response(&response(
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
        ));
        let text = refused
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            text.contains("stopped at managed identity") && text.contains("Identity not found"),
            "{text}"
        );
        assert!(refused.is_err_and(|e| !e.is_retryable()));
    }

    #[test]
    fn identity_endpoint_with_imds_endpoint_is_arc_even_when_msi_endpoint_is_set() {
        let steps = chain(&[
            (
                env::IDENTITY_ENDPOINT,
                "http://localhost:40342/metadata/identity/oauth2/token",
            ),
            (env::IMDS_ENDPOINT, "http://localhost:40342"),
            (env::MSI_ENDPOINT, "http://localhost:50342/oauth2/token"),
        ]);
        assert_eq!(
            names(&steps)[2].1,
            Ok("managed identity (Azure Arc)".to_owned())
        );
    }

    #[test]
    fn identity_endpoint_alone_skips_managed_identity_with_the_reason() {
        let steps = names(&chain(&[(
            env::IDENTITY_ENDPOINT,
            "http://localhost:1/token",
        )]));
        assert!(
            steps[2]
                .1
                .as_ref()
                .is_err_and(|r| r.contains("IDENTITY_HEADER") && r.contains("IMDS_ENDPOINT")),
            "{steps:?}"
        );
        assert!(steps[3].1.is_ok());
    }

    #[test]
    fn invalid_token_credentials_is_an_error_at_construction() {
        let map: BTreeMap<&str, &str> = [(env::AZURE_TOKEN_CREDENTIALS, "bogus")].into();
        let error = DefaultChain::try_from_env(&map);
        assert!(error.is_err_and(
            |e| e.field == env::AZURE_TOKEN_CREDENTIALS && e.to_string().contains("not one of")
        ),);
        let map: BTreeMap<&str, &str> = [(env::AZURE_TOKEN_CREDENTIALS, " Dev ")].into();
        assert!(DefaultChain::try_from_env(&map).is_ok());
        assert!(DefaultChain::try_from_env(&BTreeMap::<&str, &str>::new()).is_ok());
    }
}
