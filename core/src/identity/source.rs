//! [`TokenSource`], [`Fetch`] and [`Step`]: one type over every flow, and the step contract

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use time::UtcOffset;

use crate::error::{ConfigError, FetchError, ResponseError, TransportError};
use crate::identity::chain::{ChainFetch, DefaultChain};
use crate::identity::cli::{AzureCli, AzureDeveloperCli, CommandOutput, CommandSpec};
use crate::identity::client_secret::ClientSecret;
use crate::identity::custom::{CustomSource, StaticToken};
use crate::identity::imds::{self, Imds};
use crate::identity::managed::ManagedIdentity;
use crate::identity::workload::{self, WorkloadIdentity};
use crate::secret::{SecretBytes, SecretString};
use crate::token::TokenResponse;

#[cfg(feature = "certificate")]
use crate::identity::client_certificate::{self, ClientCertificate, ClientCertificateFile};

/// Every way to get a token
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TokenSource {
    /// A managed identity of the Azure host
    ManagedIdentity(ManagedIdentity),
    /// A service principal with a client secret
    ClientSecret(ClientSecret),
    /// A service principal with an already loaded certificate
    #[cfg(feature = "certificate")]
    ClientCertificate(ClientCertificate),
    /// A service principal with a certificate file, read at every fetch
    #[cfg(feature = "certificate")]
    ClientCertificateFile(ClientCertificateFile),
    /// AKS workload identity
    WorkloadIdentity(WorkloadIdentity),
    /// The Azure CLI's signed-in account
    AzureCli(AzureCli),
    /// The Azure Developer CLI's signed-in account
    AzureDeveloperCli(AzureDeveloperCli),
    /// A user callback
    Custom(CustomSource),
    /// A fixed token
    Static(StaticToken),
    /// The default chain: environment, workload identity, managed identity, Azure CLI, azd
    DefaultChain(DefaultChain),
}

impl TokenSource {
    /// A short name for messages ("managed identity (IMDS)", "Azure CLI", ...)
    pub fn name(&self) -> String {
        match self {
            TokenSource::ManagedIdentity(m) => format!("managed identity ({})", m.host_name()),
            TokenSource::ClientSecret(_) => "client secret".to_owned(),
            #[cfg(feature = "certificate")]
            TokenSource::ClientCertificate(_) | TokenSource::ClientCertificateFile(_) => {
                "client certificate".to_owned()
            }
            TokenSource::WorkloadIdentity(_) => "workload identity".to_owned(),
            TokenSource::AzureCli(_) => "Azure CLI".to_owned(),
            TokenSource::AzureDeveloperCli(_) => "Azure Developer CLI".to_owned(),
            TokenSource::Custom(c) => format!("custom ({})", c.name()),
            TokenSource::Static(_) => "static token".to_owned(),
            TokenSource::DefaultChain(_) => "default chain".to_owned(),
        }
    }

    /// Starts one token fetch
    pub fn fetch(&self, ctx: FetchContext) -> Fetch {
        let inner = match self {
            TokenSource::DefaultChain(chain) => {
                Inner::Chain(Box::new(ChainFetch::new(chain.clone())))
            }
            other => Inner::Single(SingleFetch::new(other.clone(), false)),
        };
        Fetch { ctx, inner }
    }
}

/// What a fetch needs from the world that the core does not read itself
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchContext {
    /// Wall-clock time when the fetch starts (assertion `iat`/`nbf`/`exp`)
    pub wall: SystemTime,
    /// 32 bytes from the operating system's random source, fresh for every fetch
    pub seed: [u8; 32],
    /// The machine's UTC offset (Azure CLI before 2.54 prints local time)
    pub local_utc_offset: UtcOffset,
}

impl FetchContext {
    /// A context at `wall` with OS randomness `seed`, UTC local time
    pub fn new(wall: SystemTime, seed: [u8; 32]) -> Self {
        Self {
            wall,
            seed,
            local_utc_offset: UtcOffset::UTC,
        }
    }

    /// Sets the local UTC offset in seconds (clamped to ±25 h)
    #[must_use]
    pub fn with_local_utc_offset_seconds(mut self, seconds: i32) -> Self {
        self.local_utc_offset =
            UtcOffset::from_whole_seconds(seconds.clamp(-90_000, 90_000)).unwrap_or(UtcOffset::UTC);
        self
    }
}

impl fmt::Debug for FetchContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchContext")
            .field("wall", &self.wall)
            .field("seed", &format_args!("{}", crate::secret::REDACTED))
            .field("local_utc_offset", &self.local_utc_offset)
            .finish()
    }
}

/// How the runtime must send a request
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestMeta {
    /// A local identity endpoint (IMDS, App Service, Arc, ...): bypass every proxy
    pub local_endpoint: bool,
    /// Plain `http` is expected (local endpoints, loopback emulators); refuse it otherwise
    pub allow_plain_http: bool,
    /// Use this timeout instead of the configured one when it is shorter (the IMDS probe: 1 s)
    pub timeout: Option<Duration>,
    /// This is an availability probe: no retries, a transport error means "not here"
    pub probe: bool,
    /// Accept only a server certificate whose SHA-1 thumbprint (uppercase hex) is this
    /// (Service Fabric's self-signed endpoint)
    pub server_sha1_thumbprint: Option<String>,
}

impl RequestMeta {
    fn local() -> Self {
        Self {
            local_endpoint: true,
            allow_plain_http: true,
            timeout: None,
            probe: false,
            server_sha1_thumbprint: None,
        }
    }

    fn remote(loopback: bool) -> Self {
        Self {
            local_endpoint: loopback,
            allow_plain_http: loopback,
            timeout: None,
            probe: false,
            server_sha1_thumbprint: None,
        }
    }
}

/// What the runtime must do next
///
/// Deliberately exhaustive: a runtime cannot execute a step it does not know, so a new kind of
/// step must break its build rather than fail at run time.
pub enum Step {
    /// Send this request and pass the response to [`Fetch::on_http_response`]
    Http {
        /// The request (its body or headers may hold secrets: never log them)
        request: crate::identity::IdentityRequest,
        /// How to send it
        meta: RequestMeta,
    },
    /// Read this file (at most `max_len` bytes) and pass it to [`Fetch::on_file`]
    ReadFile {
        /// The file
        path: PathBuf,
        /// Refuse larger files
        max_len: u64,
    },
    /// Run this command and pass its output to [`Fetch::on_command_output`]
    RunCommand(CommandSpec),
    /// Call this callback and pass its result to [`Fetch::on_custom_result`]
    CallCustom(CustomSource),
    /// The fetch is over
    Done(TokenResponse),
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Http { request, meta } => f
                .debug_struct("Http")
                .field("method", request.method())
                .field("uri", request.uri())
                .field("body_len", &request.body().len())
                .field("meta", meta)
                .finish(),
            Step::ReadFile { path, max_len } => f
                .debug_struct("ReadFile")
                .field("path", path)
                .field("max_len", max_len)
                .finish(),
            Step::RunCommand(spec) => f.debug_tuple("RunCommand").field(spec).finish(),
            Step::CallCustom(source) => f.debug_tuple("CallCustom").field(source).finish(),
            Step::Done(token) => f.debug_tuple("Done").field(token).finish(),
        }
    }
}

/// One token fetch in progress: the step contract a runtime executes without knowing flows
///
/// A [`TokenSource`] is configuration. Each token fetch is a [`Fetch`]: a small state machine
/// that tells the runtime what to do next as a [`Step`] (send this HTTP request, read this file,
/// run this command, call this callback) and takes the outcome back. The runtime's executor is
/// one loop:
///
/// ```
/// use redis_entraid_core::error::{FetchError, TransportError};
/// use redis_entraid_core::identity::{Fetch, FetchContext, Step, TokenSource};
/// use redis_entraid_core::identity::custom::StaticToken;
/// use redis_entraid_core::token::{AccessToken, TokenResponse};
/// # use std::time::SystemTime;
/// # fn send(_: &redis_entraid_core::identity::IdentityRequest) -> Result<http::Response<Vec<u8>>, TransportError> { unimplemented!() }
/// # fn read(_: &std::path::Path, _: u64) -> Result<redis_entraid_core::secret::SecretBytes, TransportError> { unimplemented!() }
/// # fn run(_: &redis_entraid_core::identity::cli::CommandSpec) -> redis_entraid_core::identity::cli::CommandOutput { unimplemented!() }
///
/// fn fetch_token(source: &TokenSource, ctx: FetchContext) -> Result<TokenResponse, FetchError> {
///     let mut fetch = source.fetch(ctx);
///     let mut step = fetch.start();
///     loop {
///         step = match step? {
///             Step::Done(token) => return Ok(token),
///             // honour meta: bypass proxies for local endpoints, its timeout, no redirects...
///             Step::Http { request, meta: _ } => match send(&request) {
///                 Ok(response) => fetch.on_http_response(&response),
///                 Err(e) => fetch.on_transport_error(e.into()),
///             },
///             Step::ReadFile { path, max_len } => fetch.on_file(read(&path, max_len)),
///             Step::RunCommand(spec) => fetch.on_command_output(&run(&spec)),
///             Step::CallCustom(source) => fetch.on_custom_result(source.call()),
///         };
///     }
/// }
///
/// let source = TokenSource::Static(StaticToken::new(AccessToken::new("eyJ.a.b")));
/// let token = fetch_token(&source, FetchContext::new(SystemTime::UNIX_EPOCH, [0; 32]));
/// assert_eq!(token.map(|t| t.access_token.expose_secret().to_owned()).as_deref(), Ok("eyJ.a.b"));
/// ```
///
/// Rules for the runtime:
/// - Feed exactly one outcome per step: the response (any status), or a transport error /
///   [`FetchError::TimedOut`] through [`Fetch::on_transport_error`]. Do not retry inside a step:
///   the machine retries the whole fetch, which e.g. gets Azure Arc a fresh challenge.
/// - A timeout or connection failure is a transport error; the chain treats it as "unavailable".
/// - [`RequestMeta`]: for `local_endpoint` requests bypass every proxy and never add
///   `X-Forwarded-For`; allow plain `http` only when `allow_plain_http`; use `timeout` when given
///   (never longer than the machine's deadline); pin `server_sha1_thumbprint` when given (Service
///   Fabric: accept only a server certificate whose SHA-1 matches); do not follow redirects.
/// - [`Step::ReadFile`]: refuse files larger than `max_len` (check the size before reading);
///   report a failure as a [`TransportError`] (`permanent` when the file is missing).
/// - Time and randomness enter through [`FetchContext`]: the wall clock when the fetch starts,
///   32 bytes from the OS random source (client-certificate assertions), the local UTC offset
///   (Azure CLI's local-time `expiresOn`).
#[derive(Debug)]
pub struct Fetch {
    ctx: FetchContext,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Single(SingleFetch),
    Chain(Box<ChainFetch>),
}

impl Fetch {
    /// The first step
    ///
    /// # Errors
    /// The fetch failed before any I/O (a configuration error surfaces as a non-retryable
    /// [`FetchError::Response`]; a chain that found nothing configured lists every step).
    pub fn start(&mut self) -> Result<Step, FetchError> {
        match &mut self.inner {
            Inner::Single(s) => s.start(&self.ctx),
            Inner::Chain(c) => c.start(&self.ctx),
        }
    }

    /// The answer to a [`Step::Http`], whatever its status
    ///
    /// # Errors
    /// The flow's classified failure.
    pub fn on_http_response(
        &mut self,
        response: &http::Response<Vec<u8>>,
    ) -> Result<Step, FetchError> {
        let outcome = Outcome::Http(response);
        self.feed(outcome)
    }

    /// The request of a [`Step::Http`] got no answer (or timed out), or a [`Step::ReadFile`] /
    /// [`Step::RunCommand`] could not be carried out at all
    ///
    /// # Errors
    /// The error, or for a chain the combined report when no step is left.
    pub fn on_transport_error(&mut self, error: FetchError) -> Result<Step, FetchError> {
        self.feed(Outcome::Transport(error))
    }

    /// The contents of the file of a [`Step::ReadFile`], or why it could not be read
    ///
    /// # Errors
    /// The flow's failure (e.g. the Arc key file too large, the certificate unreadable).
    pub fn on_file(
        &mut self,
        contents: Result<SecretBytes, TransportError>,
    ) -> Result<Step, FetchError> {
        match contents {
            Ok(bytes) => self.feed(Outcome::File(bytes)),
            Err(e) => self.feed(Outcome::Transport(e.into())),
        }
    }

    /// The output of a [`Step::RunCommand`]
    ///
    /// # Errors
    /// The CLI's classified failure.
    pub fn on_command_output(&mut self, output: &CommandOutput) -> Result<Step, FetchError> {
        self.feed(Outcome::Command(output))
    }

    /// The result of a [`Step::CallCustom`]
    ///
    /// # Errors
    /// The callback's error.
    pub fn on_custom_result(
        &mut self,
        result: Result<TokenResponse, FetchError>,
    ) -> Result<Step, FetchError> {
        self.feed(Outcome::Custom(result))
    }

    /// For the default chain, after [`Step::Done`]: the source that produced the token. Like
    /// `DefaultAzureCredential`, a runtime may use it alone from then on.
    pub fn winner(&self) -> Option<&TokenSource> {
        match &self.inner {
            Inner::Single(_) => None,
            Inner::Chain(c) => c.winner(),
        }
    }

    fn feed(&mut self, outcome: Outcome<'_>) -> Result<Step, FetchError> {
        match &mut self.inner {
            Inner::Single(s) => s.feed(outcome, &self.ctx),
            Inner::Chain(c) => c.feed(outcome, &self.ctx),
        }
    }
}

/// The outcome of a step, as the runtime reported it
pub(crate) enum Outcome<'a> {
    Http(&'a http::Response<Vec<u8>>),
    Transport(FetchError),
    File(SecretBytes),
    Command(&'a CommandOutput),
    Custom(Result<TokenResponse, FetchError>),
}

/// Where a single-source fetch stands
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    NotStarted,
    /// IMDS probe sent (chain only)
    Probe,
    /// Arc's first request sent
    ArcChallenge,
    /// Arc's key file requested
    ArcKey,
    /// Workload identity's token file requested
    AssertionFile,
    /// Certificate file requested
    #[cfg(feature = "certificate")]
    CertificateFile,
    /// The token request, command or callback is out
    Token,
    Finished,
}

/// A fetch over one non-chain source
#[derive(Debug)]
pub(crate) struct SingleFetch {
    pub(crate) source: TokenSource,
    probe_first: bool,
    pub(crate) phase: Phase,
}

pub(crate) fn config_failure(error: ConfigError) -> FetchError {
    ResponseError::new(format!("configuration error: {error}"), false).into()
}

fn unexpected(phase: Phase) -> FetchError {
    ResponseError::new(
        format!("the runtime reported an outcome that does not match the last step ({phase:?}); this is a bug in the runtime's executor"),
        false,
    )
    .into()
}

impl SingleFetch {
    pub(crate) fn new(source: TokenSource, probe_first: bool) -> Self {
        Self {
            source,
            probe_first,
            phase: Phase::NotStarted,
        }
    }

    fn http(
        &mut self,
        phase: Phase,
        request: Result<crate::identity::IdentityRequest, ConfigError>,
        meta: RequestMeta,
    ) -> Result<Step, FetchError> {
        self.phase = phase;
        Ok(Step::Http {
            request: request.map_err(config_failure)?,
            meta,
        })
    }

    fn done(&mut self, token: TokenResponse) -> Result<Step, FetchError> {
        self.phase = Phase::Finished;
        Ok(Step::Done(token))
    }

    #[cfg_attr(not(feature = "certificate"), allow(unused_variables))]
    pub(crate) fn start(&mut self, ctx: &FetchContext) -> Result<Step, FetchError> {
        match &self.source {
            TokenSource::ManagedIdentity(managed) => {
                let managed = managed.clone();
                self.start_managed(&managed)
            }
            TokenSource::ClientSecret(secret) => {
                let loopback = secret.client().authority().is_loopback();
                let request = secret.build_request();
                self.http(Phase::Token, request, RequestMeta::remote(loopback))
            }
            #[cfg(feature = "certificate")]
            TokenSource::ClientCertificate(cert) => {
                let loopback = cert.client().authority().is_loopback();
                let request = cert.build_request_with_seed(ctx.wall, ctx.seed);
                self.http(Phase::Token, request, RequestMeta::remote(loopback))
            }
            #[cfg(feature = "certificate")]
            TokenSource::ClientCertificateFile(file) => {
                self.phase = Phase::CertificateFile;
                Ok(Step::ReadFile {
                    path: file.path().to_path_buf(),
                    max_len: client_certificate::MAX_CERTIFICATE_FILE_LEN,
                })
            }
            TokenSource::WorkloadIdentity(workload) => {
                self.phase = Phase::AssertionFile;
                Ok(Step::ReadFile {
                    path: workload.token_file().to_path_buf(),
                    max_len: workload::MAX_TOKEN_FILE_LEN,
                })
            }
            TokenSource::AzureCli(cli) => {
                self.phase = Phase::Token;
                Ok(Step::RunCommand(cli.command()))
            }
            TokenSource::AzureDeveloperCli(cli) => {
                self.phase = Phase::Token;
                Ok(Step::RunCommand(cli.command()))
            }
            TokenSource::Custom(custom) => {
                self.phase = Phase::Token;
                Ok(Step::CallCustom(custom.clone()))
            }
            TokenSource::Static(fixed) => {
                let token = fixed.response();
                self.done(token)
            }
            TokenSource::DefaultChain(_) => Err(ResponseError::new(
                "a default chain cannot be nested inside another chain",
                false,
            )
            .into()),
        }
    }

    fn start_managed(&mut self, managed: &ManagedIdentity) -> Result<Step, FetchError> {
        match managed {
            ManagedIdentity::Imds(imds) if self.probe_first => {
                let mut meta = RequestMeta::local();
                meta.timeout = Some(imds::PROBE_TIMEOUT);
                meta.probe = true;
                self.http(Phase::Probe, imds.build_probe_request(), meta)
            }
            ManagedIdentity::Imds(imds) => {
                self.http(Phase::Token, imds.build_request(), RequestMeta::local())
            }
            ManagedIdentity::AppService(m) => {
                self.http(Phase::Token, m.build_request(), RequestMeta::local())
            }
            ManagedIdentity::AppServiceLegacy(m) => {
                self.http(Phase::Token, m.build_request(), RequestMeta::local())
            }
            ManagedIdentity::AzureMl(m) => {
                self.http(Phase::Token, m.build_request(), RequestMeta::local())
            }
            ManagedIdentity::CloudShell(m) => {
                self.http(Phase::Token, m.build_request(), RequestMeta::local())
            }
            ManagedIdentity::AzureArc(m) => {
                self.http(Phase::ArcChallenge, m.build_request(), RequestMeta::local())
            }
            ManagedIdentity::ServiceFabric(m) => {
                let mut meta = RequestMeta::local();
                meta.allow_plain_http = false;
                meta.server_sha1_thumbprint = Some(m.server_thumbprint().to_owned());
                self.http(Phase::Token, m.build_request(), meta)
            }
        }
    }

    pub(crate) fn feed(
        &mut self,
        outcome: Outcome<'_>,
        ctx: &FetchContext,
    ) -> Result<Step, FetchError> {
        let phase = self.phase;
        if let Outcome::Transport(error) = outcome {
            self.phase = Phase::Finished;
            return Err(if phase == Phase::Probe {
                ResponseError::new(
                    format!("IMDS did not answer the probe, so this is not an Azure VM ({error})"),
                    false,
                )
                .into()
            } else {
                error
            });
        }
        match (phase, outcome, &self.source) {
            (
                Phase::Probe,
                Outcome::Http(response),
                TokenSource::ManagedIdentity(ManagedIdentity::Imds(imds)),
            ) => {
                if Imds::parse_probe_response(response) {
                    let request = imds.build_request();
                    self.http(Phase::Token, request, RequestMeta::local())
                } else {
                    self.phase = Phase::Finished;
                    Err(ResponseError::new(
                        "IMDS is unreachable: a proxy answered 403 for 169.254.169.254",
                        false,
                    )
                    .with_status(403)
                    .into())
                }
            }
            (
                Phase::ArcChallenge,
                Outcome::Http(response),
                TokenSource::ManagedIdentity(ManagedIdentity::AzureArc(arc)),
            ) => {
                let file = arc.parse_challenge(response)?;
                self.phase = Phase::ArcKey;
                Ok(Step::ReadFile {
                    path: file.path,
                    max_len: file.max_len,
                })
            }
            (
                Phase::ArcKey,
                Outcome::File(key),
                TokenSource::ManagedIdentity(ManagedIdentity::AzureArc(arc)),
            ) => {
                let request = arc.build_authorized_request(&key)?;
                self.phase = Phase::Token;
                Ok(Step::Http {
                    request,
                    meta: RequestMeta::local(),
                })
            }
            (
                Phase::AssertionFile,
                Outcome::File(contents),
                TokenSource::WorkloadIdentity(workload),
            ) => {
                let text = String::from_utf8(contents.expose_secret().to_vec()).map_err(|_| {
                    config_failure(ConfigError::new(
                        crate::identity::env::AZURE_FEDERATED_TOKEN_FILE,
                        "the token file is not UTF-8 text",
                    ))
                })?;
                let assertion = SecretString::new(text);
                let loopback = workload.client().authority().is_loopback();
                let request = workload.build_request(&assertion);
                self.http(Phase::Token, request, RequestMeta::remote(loopback))
            }
            #[cfg(feature = "certificate")]
            (
                Phase::CertificateFile,
                Outcome::File(contents),
                TokenSource::ClientCertificateFile(file),
            ) => {
                let cert = file.load(&contents).map_err(config_failure)?;
                let loopback = cert.client().authority().is_loopback();
                let request = cert.build_request_with_seed(ctx.wall, ctx.seed);
                self.http(Phase::Token, request, RequestMeta::remote(loopback))
            }
            (Phase::Token, Outcome::Http(response), source) => {
                self.phase = Phase::Finished;
                let token = parse_http(source, response)?;
                self.done(token)
            }
            (Phase::Token, Outcome::Command(output), TokenSource::AzureCli(cli)) => {
                self.phase = Phase::Finished;
                let token = cli.parse_output(output, ctx.local_utc_offset)?;
                self.done(token)
            }
            (Phase::Token, Outcome::Command(output), TokenSource::AzureDeveloperCli(cli)) => {
                self.phase = Phase::Finished;
                let token = cli.parse_output(output)?;
                self.done(token)
            }
            (Phase::Token, Outcome::Custom(result), TokenSource::Custom(_)) => {
                self.phase = Phase::Finished;
                let token = result?;
                self.done(token)
            }
            _ => {
                self.phase = Phase::Finished;
                Err(unexpected(phase))
            }
        }
    }
}

fn parse_http(
    source: &TokenSource,
    response: &http::Response<Vec<u8>>,
) -> Result<TokenResponse, FetchError> {
    let parsed = match source {
        TokenSource::ManagedIdentity(managed) => match managed {
            ManagedIdentity::Imds(m) => m.parse_response(response),
            ManagedIdentity::AppService(m) => m.parse_response(response),
            ManagedIdentity::AppServiceLegacy(m) => m.parse_response(response),
            ManagedIdentity::AzureArc(m) => m.parse_response(response),
            ManagedIdentity::AzureMl(m) => m.parse_response(response),
            ManagedIdentity::CloudShell(m) => m.parse_response(response),
            ManagedIdentity::ServiceFabric(m) => m.parse_response(response),
        },
        TokenSource::ClientSecret(_) | TokenSource::WorkloadIdentity(_) => {
            crate::identity::entra::parse_response(response)
        }
        #[cfg(feature = "certificate")]
        TokenSource::ClientCertificate(_) | TokenSource::ClientCertificateFile(_) => {
            crate::identity::entra::parse_response(response)
        }
        _ => return Err(unexpected(Phase::Token)),
    };
    Ok(parsed?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::arc::{ArcPlatform, AzureArc};
    use crate::identity::entra::EntraClient;
    use crate::identity::imds::tests::response;
    use crate::identity::managed::ManagedIdentityId;
    use crate::identity::service_fabric::ServiceFabric;
    use crate::token::AccessToken;

    fn ctx() -> FetchContext {
        FetchContext::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_139_200),
            [3; 32],
        )
    }

    fn client() -> EntraClient {
        EntraClient::new("t1", "c1").unwrap_or_else(|e| panic!("{e}"))
    }

    const TOKEN_BODY: &str =
        r#"{"access_token":"eyJ.tok.sig","expires_in":"3599","token_type":"Bearer"}"#;

    #[test]
    fn arc_runs_challenge_key_file_and_authorized_request() {
        let arc = AzureArc::new(
            crate::identity::arc::DEFAULT_ENDPOINT,
            ManagedIdentityId::SystemAssigned,
            ArcPlatform::Linux,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let source = TokenSource::ManagedIdentity(ManagedIdentity::AzureArc(arc));
        let mut fetch = source.fetch(ctx());
        let first = fetch.start();
        let Ok(Step::Http { meta, .. }) = first else {
            panic!("{first:?}")
        };
        assert!(meta.local_endpoint && meta.allow_plain_http);
        let mut challenge = response(401, "");
        challenge.headers_mut().insert(
            "WWW-Authenticate",
            http::HeaderValue::from_static("Basic realm=/var/opt/azcmagent/tokens/abc.key"),
        );
        let read = fetch.on_http_response(&challenge);
        let Ok(Step::ReadFile { path, max_len }) = read else {
            panic!("{read:?}")
        };
        assert_eq!(path, PathBuf::from("/var/opt/azcmagent/tokens/abc.key"));
        assert_eq!(max_len, 4096);
        let second = fetch.on_file(Ok(SecretBytes::new(b"arc-key-secret".to_vec())));
        let printed = format!("{second:?}");
        assert!(!printed.contains("arc-key-secret"), "{printed}");
        let Ok(Step::Http { request, .. }) = second else {
            panic!("{second:?}")
        };
        assert_eq!(request.headers()["authorization"], "Basic arc-key-secret");
        let done = fetch.on_http_response(&response(200, TOKEN_BODY));
        assert!(matches!(done, Ok(Step::Done(ref t)) if t.expires_in == Some(3599)));
    }

    #[test]
    fn workload_identity_reads_the_file_at_every_fetch() {
        let workload = WorkloadIdentity::new(
            client(),
            "/var/run/secrets/azure/tokens/azure-identity-token",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let source = TokenSource::WorkloadIdentity(workload);
        for assertion in ["eyJ.first.sig", "eyJ.rotated.sig"] {
            let mut fetch = source.fetch(ctx());
            let read = fetch.start();
            let Ok(Step::ReadFile { path, max_len }) = read else {
                panic!("{read:?}")
            };
            assert_eq!(
                path,
                PathBuf::from("/var/run/secrets/azure/tokens/azure-identity-token")
            );
            assert_eq!(max_len, workload::MAX_TOKEN_FILE_LEN);
            let post = fetch.on_file(Ok(SecretBytes::new(assertion.as_bytes().to_vec())));
            let printed = format!("{post:?}");
            assert!(!printed.contains(assertion), "{printed}");
            let Ok(Step::Http { request, meta }) = post else {
                panic!("{post:?}")
            };
            assert!(!meta.local_endpoint);
            assert!(String::from_utf8_lossy(request.body()).contains(assertion));
            let done = fetch.on_http_response(&response(200, TOKEN_BODY));
            assert!(matches!(done, Ok(Step::Done(_))));
        }
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        let missing = fetch.on_file(Err(TransportError::permanent("no such file")));
        assert!(missing.is_err_and(|e| !e.is_retryable()));
    }

    #[cfg(feature = "certificate")]
    #[test]
    fn certificate_file_is_read_then_signed_with_the_context_seed() {
        let pem = include_bytes!("../../test-fixtures/client-pkcs8.pem");
        let source = TokenSource::ClientCertificateFile(ClientCertificateFile::new(
            client(),
            "/etc/cert.pem",
        ));
        let mut fetch = source.fetch(ctx());
        let read = fetch.start();
        assert!(
            matches!(read, Ok(Step::ReadFile { ref path, .. }) if path == &PathBuf::from("/etc/cert.pem"))
        );
        let post = fetch.on_file(Ok(SecretBytes::new(pem.to_vec())));
        let Ok(Step::Http { request, .. }) = post else {
            panic!("{post:?}")
        };
        assert!(String::from_utf8_lossy(request.body()).contains("client_assertion="));
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        let bad = fetch.on_file(Ok(SecretBytes::new(b"garbage".to_vec())));
        assert!(
            bad.is_err_and(|e| !e.is_retryable() && e.to_string().contains("client_certificate"))
        );
    }

    #[test]
    fn service_fabric_request_pins_the_thumbprint_and_refuses_plain_http() {
        let fabric = ServiceFabric::new(
            "https://localhost:2377/metadata/identity/oauth2/token",
            SecretString::new("s"),
            "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
            &ManagedIdentityId::SystemAssigned,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut fetch =
            TokenSource::ManagedIdentity(ManagedIdentity::ServiceFabric(fabric)).fetch(ctx());
        let first = fetch.start();
        let Ok(Step::Http { meta, .. }) = first else {
            panic!("{first:?}")
        };
        assert!(!meta.allow_plain_http && meta.local_endpoint);
        assert_eq!(
            meta.server_sha1_thumbprint.as_deref(),
            Some("ABCDEF0123456789ABCDEF0123456789ABCDEF01")
        );
    }

    #[test]
    fn plain_imds_sends_no_probe_and_classifies_errors() {
        let source = TokenSource::ManagedIdentity(ManagedIdentity::Imds(Imds::new(
            ManagedIdentityId::SystemAssigned,
        )));
        let mut fetch = source.fetch(ctx());
        let first = fetch.start();
        let Ok(Step::Http { request, meta }) = first else {
            panic!("{first:?}")
        };
        assert!(!meta.probe && meta.timeout.is_none());
        assert_eq!(request.headers()["metadata"], "true");
        let gone = fetch.on_http_response(&response(410, ""));
        assert!(gone.is_err_and(|e| e.is_retryable()));
        let mut fetch = source.fetch(ctx());
        assert!(fetch.start().is_ok());
        let timed_out = fetch.on_transport_error(FetchError::TimedOut {
            after: Duration::from_secs(10),
        });
        assert!(timed_out.is_err_and(|e| e.is_retryable()));
    }

    #[test]
    fn cli_custom_and_static_sources_complete() {
        let mut fetch =
            TokenSource::AzureCli(AzureCli::new()).fetch(ctx().with_local_utc_offset_seconds(3600));
        assert!(matches!(fetch.start(), Ok(Step::RunCommand(_))));
        let out = CommandOutput::new(
            Some(0),
            br#"{"accessToken":"eyJ.cli.sig","expiresOn":"2026-01-01 01:00:00.000000","tokenType":"Bearer"}"#.to_vec(),
            Vec::new(),
        );
        let done = fetch.on_command_output(&out);
        assert!(matches!(done, Ok(Step::Done(ref t)) if t.expires_on == Some(1_767_225_600)));

        let custom = CustomSource::new("fixed", |_: &str| {
            Ok(TokenResponse::new(AccessToken::new("c")))
        });
        let mut fetch = TokenSource::Custom(custom).fetch(ctx());
        let Ok(Step::CallCustom(call)) = fetch.start() else {
            panic!("custom step")
        };
        assert!(matches!(
            fetch.on_custom_result(call.call()),
            Ok(Step::Done(_))
        ));

        let fixed = TokenSource::Static(StaticToken::new(AccessToken::new("eyJ.static")));
        let done = fixed.fetch(ctx()).start();
        assert!(
            matches!(done, Ok(Step::Done(ref t)) if t.access_token.expose_secret() == "eyJ.static")
        );
        assert!(!format!("{done:?}").contains("eyJ.static"));
    }

    #[test]
    fn secrets_never_appear_in_step_debug_and_mismatched_outcomes_fail_cleanly() {
        let secret = ClientSecret::new(client(), SecretString::new("top-secret-value"))
            .unwrap_or_else(|e| panic!("{e}"));
        let source = TokenSource::ClientSecret(secret);
        assert!(!format!("{source:?}").contains("top-secret-value"));
        let mut fetch = source.fetch(ctx());
        let step = fetch.start();
        let printed = format!("{step:?} {fetch:?}");
        assert!(!printed.contains("top-secret-value"), "{printed}");
        let wrong = fetch.on_command_output(&CommandOutput::not_found());
        assert!(wrong.is_err_and(|e| e.to_string().contains("does not match the last step")));
        let after = fetch.on_http_response(&response(200, TOKEN_BODY));
        assert!(after.is_err());
    }
}
