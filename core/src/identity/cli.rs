//! Azure CLI and Azure Developer CLI: the core describes the command, the runtime runs it
//!
//! - [`AzureCli`]: `az account get-access-token --output json --scope <scope> [--tenant <id>]
//!   [--subscription <id>]`. Output `{"accessToken", "expiresOn", "expires_on"?, "tokenType",
//!   "tenant", "subscription"?}`: `expires_on` (epoch seconds, Azure CLI 2.54+) is preferred;
//!   `expiresOn` is `YYYY-MM-DD HH:MM:SS.ffffff` in the machine's **local** time zone, so the
//!   runtime passes the local UTC offset.
//! - [`AzureDeveloperCli`]: `azd auth token --output json --no-prompt --scope <scope>
//!   [--tenant-id <id>]`. Output `{"token", "expiresOn"}` with an RFC 3339 `expiresOn`.
//!
//! How to run a [`CommandSpec`]: no shell, stdin closed, working directory `/bin` on Unix and
//! `%SYSTEMROOT%` on Windows (so a planted `az` in the application directory is not picked up),
//! the extra environment variables set, killed after `timeout`. On Windows `az` is a batch file
//! (`az.cmd`): run [`CommandSpec::windows_program`]. When the program cannot be started because it
//! does not exist, report [`CommandOutput::not_found`].
//!
//! CLI failures are never retried quickly (azure-protocols §11): not installed, not logged in, or
//! rejected by Entra all need a human.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use time::UtcOffset;

use crate::error::{ConfigError, FetchError, ResponseError, TransportError};
use crate::identity::authority::{TenantId, DEFAULT_SCOPE};
use crate::identity::common;
use crate::secret::SecretBytes;
use crate::token::TokenResponse;

/// How long a CLI may run (the Azure SDKs' default)
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A program to run, as data
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandSpec {
    /// The program (`az`, `azd`), looked up on `PATH`
    pub program: String,
    /// The program to run instead on Windows (`az.cmd`)
    pub windows_program: String,
    /// The arguments, passed without a shell
    pub args: Vec<String>,
    /// Variables to add to the inherited environment
    pub env: Vec<(String, String)>,
    /// Kill the process after this long
    pub timeout: Duration,
}

/// What a finished process produced
///
/// `stdout` holds the token, so it is a secret; `stderr` is kept as text for error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; `None` when the process was killed by a signal
    pub status: Option<i32>,
    /// Standard output
    pub stdout: SecretBytes,
    /// Standard error
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// A process result
    pub fn new(status: Option<i32>, stdout: Vec<u8>, stderr: Vec<u8>) -> Self {
        Self {
            status,
            stdout: SecretBytes::new(stdout),
            stderr,
        }
    }

    /// The program does not exist (reported as exit code 127, as a shell would)
    pub fn not_found() -> Self {
        Self::new(Some(127), Vec::new(), Vec::new())
    }
}

impl fmt::Debug for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandOutput")
            .field("status", &self.status)
            .field("stdout", &self.stdout)
            .field("stderr_len", &self.stderr.len())
            .finish()
    }
}

fn check_argument(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~:/".contains(c);
    if value.is_empty() || value.starts_with('-') || !value.chars().all(allowed) {
        return Err(ConfigError::new(
            field,
            format!(
                "`{}` cannot be passed to a CLI: use only letters, digits and - . _ ~ : /, not \
                 starting with -",
                common::clip(value)
            ),
        ));
    }
    Ok(())
}

/// Azure CLI (`az account get-access-token`)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureCli {
    scope: String,
    tenant: Option<TenantId>,
    subscription: Option<String>,
    timeout: Duration,
}

impl Default for AzureCli {
    fn default() -> Self {
        Self {
            scope: DEFAULT_SCOPE.to_owned(),
            tenant: None,
            subscription: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl AzureCli {
    /// The signed-in `az` user's token for Redis
    pub fn new() -> Self {
        Self::default()
    }

    /// Another scope than Redis's
    ///
    /// # Errors
    /// A [`ConfigError`] when the scope holds characters unsafe on a command line.
    pub fn with_scope(mut self, scope: &str) -> Result<Self, ConfigError> {
        check_argument("scope", scope)?;
        self.scope = scope.to_owned();
        Ok(self)
    }

    /// A tenant other than the CLI's default
    #[must_use]
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// A subscription other than the CLI's default
    ///
    /// # Errors
    /// A [`ConfigError`] when the id holds characters unsafe on a command line.
    pub fn with_subscription(mut self, subscription: &str) -> Result<Self, ConfigError> {
        check_argument("subscription", subscription)?;
        self.subscription = Some(subscription.to_owned());
        Ok(self)
    }

    /// Another timeout than 10 s
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command to run
    pub fn command(&self) -> CommandSpec {
        let mut args: Vec<String> = ["account", "get-access-token", "--output", "json", "--scope"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(self.scope.clone());
        if let Some(tenant) = &self.tenant {
            args.extend(["--tenant".to_owned(), tenant.as_str().to_owned()]);
        }
        if let Some(subscription) = &self.subscription {
            args.extend(["--subscription".to_owned(), subscription.clone()]);
        }
        CommandSpec {
            program: "az".to_owned(),
            windows_program: "az.cmd".to_owned(),
            args,
            env: vec![("AZURE_CORE_NO_COLOR".to_owned(), "true".to_owned())],
            timeout: self.timeout,
        }
    }

    /// Reads the command's result; `local_offset` is the machine's UTC offset, needed only when
    /// the CLI is older than 2.54 and reports `expiresOn` alone
    ///
    /// # Errors
    /// [`FetchError::Transport`] (permanent) when `az` is not installed; a non-retryable
    /// [`FetchError::Response`] when it is not logged in, when Entra refused, or when the output
    /// is not the expected JSON.
    pub fn parse_output(
        &self,
        output: &CommandOutput,
        local_offset: UtcOffset,
    ) -> Result<TokenResponse, FetchError> {
        let map = successful_json(output, "Azure CLI", "az", "az login")?;
        let mut token = common::token_from_map(&map, "accessToken", "Azure CLI")?;
        token.expires_on = map
            .get("expires_on")
            .and_then(common::int_or_string)
            .or_else(|| match map.get("expiresOn") {
                Some(Value::String(s)) => common::parse_local_date(s, local_offset),
                _ => None,
            });
        token.token_type = match map.get("tokenType") {
            Some(Value::String(t)) => Some(common::clip(t)),
            _ => None,
        };
        Ok(token)
    }
}

/// Azure Developer CLI (`azd auth token`)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureDeveloperCli {
    scope: String,
    tenant: Option<TenantId>,
    timeout: Duration,
}

impl Default for AzureDeveloperCli {
    fn default() -> Self {
        Self {
            scope: DEFAULT_SCOPE.to_owned(),
            tenant: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl AzureDeveloperCli {
    /// The signed-in `azd` user's token for Redis
    pub fn new() -> Self {
        Self::default()
    }

    /// Another scope than Redis's
    ///
    /// # Errors
    /// A [`ConfigError`] when the scope holds characters unsafe on a command line.
    pub fn with_scope(mut self, scope: &str) -> Result<Self, ConfigError> {
        check_argument("scope", scope)?;
        self.scope = scope.to_owned();
        Ok(self)
    }

    /// A tenant other than azd's default
    #[must_use]
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Another timeout than 10 s
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command to run
    pub fn command(&self) -> CommandSpec {
        let mut args: Vec<String> = [
            "auth",
            "token",
            "--output",
            "json",
            "--no-prompt",
            "--scope",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(self.scope.clone());
        if let Some(tenant) = &self.tenant {
            args.extend(["--tenant-id".to_owned(), tenant.as_str().to_owned()]);
        }
        CommandSpec {
            program: "azd".to_owned(),
            windows_program: "azd".to_owned(),
            args,
            env: Vec::new(),
            timeout: self.timeout,
        }
    }

    /// Reads the command's result
    ///
    /// # Errors
    /// As [`AzureCli::parse_output`], with `azd auth login` as the advice.
    pub fn parse_output(&self, output: &CommandOutput) -> Result<TokenResponse, FetchError> {
        let map = successful_json(output, "Azure Developer CLI", "azd", "azd auth login")?;
        let mut token = common::token_from_map(&map, "token", "Azure Developer CLI")?;
        token.expires_on = map.get("expiresOn").and_then(common::expires_on);
        Ok(token)
    }
}

fn successful_json(
    output: &CommandOutput,
    source: &str,
    program: &str,
    login: &str,
) -> Result<common::JsonObject, FetchError> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lower = stderr.to_ascii_lowercase();
    let not_found = output.status == Some(127)
        || lower.contains("is not recognized as an internal or external command")
        || lower.contains("command not found");
    if not_found {
        return Err(TransportError::permanent(format!(
            "{source} is not installed (`{program}` was not found on PATH); install it or use \
             another credential"
        ))
        .into());
    }
    if output.status != Some(0) {
        let not_logged_in = (lower.contains(&login.to_ascii_lowercase())
            || lower.contains("az account set")
            || lower.contains("not logged in"))
            && !stderr.contains("AADSTS");
        let message = if not_logged_in {
            format!("{source} is not logged in: run `{login}`")
        } else if stderr.contains("accessToken") || stderr.contains("\"token\"") {
            format!(
                "{source} failed (exit {:?}); its output was withheld because it may hold a token",
                output.status
            )
        } else {
            format!(
                "{source} failed (exit {:?}): {}",
                output.status,
                common::clip(stderr.trim())
            )
        };
        return Err(ResponseError::new(message, false).into());
    }
    common::json_object(output.stdout.expose_secret()).ok_or_else(|| {
        ResponseError::new(
            format!(
                "{source} succeeded but did not print a JSON object; is `{program}` up to date?"
            ),
            false,
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(stdout: &str) -> CommandOutput {
        CommandOutput::new(Some(0), stdout.as_bytes().to_vec(), Vec::new())
    }

    fn failed(code: i32, stderr: &str) -> CommandOutput {
        CommandOutput::new(Some(code), Vec::new(), stderr.as_bytes().to_vec())
    }

    #[test]
    fn az_command_is_exact() {
        let tenant = TenantId::parse("t1").unwrap_or_else(|e| panic!("{e}"));
        let cli = AzureCli::new()
            .with_tenant(tenant)
            .with_subscription("sub-1");
        let Ok(cli) = cli else { panic!("{cli:?}") };
        let spec = cli.command();
        assert_eq!(spec.program, "az");
        assert_eq!(spec.windows_program, "az.cmd");
        assert_eq!(
            spec.args,
            [
                "account",
                "get-access-token",
                "--output",
                "json",
                "--scope",
                "https://redis.azure.com/.default",
                "--tenant",
                "t1",
                "--subscription",
                "sub-1"
            ]
        );
        assert_eq!(
            spec.env,
            [("AZURE_CORE_NO_COLOR".to_owned(), "true".to_owned())]
        );
        assert_eq!(spec.timeout, Duration::from_secs(10));
        assert!(AzureCli::new().with_scope("--debug").is_err());
        assert!(AzureCli::new().with_scope("x; rm -rf /").is_err());
    }

    #[test]
    fn az_output_prefers_epoch_and_falls_back_to_local_time() {
        let cli = AzureCli::new();
        let new = r#"{"accessToken":"eyJ.a.b","expiresOn":"2026-01-01 01:00:00.000000","expires_on":1767225600,"subscription":"s","tenant":"t","tokenType":"Bearer"}"#;
        let token = cli.parse_output(&ok(new), UtcOffset::UTC);
        let Ok(token) = token else {
            panic!("{token:?}")
        };
        assert_eq!(token.expires_on, Some(1_767_225_600));
        assert_eq!(token.token_type.as_deref(), Some("Bearer"));
        assert_eq!(token.access_token.expose_secret(), "eyJ.a.b");
        let old = r#"{"accessToken":"eyJ.a.b","expiresOn":"2026-01-01 01:00:00.123456","tenant":"t","tokenType":"Bearer"}"#;
        let plus_one = UtcOffset::from_hms(1, 0, 0).unwrap_or(UtcOffset::UTC);
        let token = cli.parse_output(&ok(old), plus_one);
        assert_eq!(token.ok().and_then(|t| t.expires_on), Some(1_767_225_600));
    }

    #[test]
    fn az_failures_say_what_to_do() {
        let cli = AzureCli::new();
        let missing = cli.parse_output(&CommandOutput::not_found(), UtcOffset::UTC);
        assert!(
            matches!(missing, Err(FetchError::Transport(ref e)) if !e.retryable && e.message.contains("not installed"))
        );
        let windows = cli.parse_output(
            &failed(
                1,
                "'az' is not recognized as an internal or external command,",
            ),
            UtcOffset::UTC,
        );
        assert!(matches!(windows, Err(FetchError::Transport(_))));
        let login = cli.parse_output(
            &failed(1, "ERROR: Please run 'az login' to setup account."),
            UtcOffset::UTC,
        );
        let text = login
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            text.contains("not logged in") && text.contains("`az login`"),
            "{text}"
        );
        assert!(login.is_err_and(|e| !e.is_retryable()));
        let aadsts = cli.parse_output(
            &failed(
                1,
                "ERROR: AADSTS70043: The refresh token has expired. Please run 'az login'",
            ),
            UtcOffset::UTC,
        );
        let text = aadsts.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("AADSTS70043"), "{text}");
        let leaky = cli.parse_output(
            &failed(2, r#"{"accessToken":"eyJ.secret"}"#),
            UtcOffset::UTC,
        );
        let text = leaky.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!text.contains("eyJ.secret"), "{text}");
        let garbage = cli.parse_output(&ok("not json"), UtcOffset::UTC);
        assert!(garbage.is_err_and(|e| !e.is_retryable()));
    }

    #[test]
    fn azd_command_and_output() {
        let tenant = TenantId::parse("t1").unwrap_or_else(|e| panic!("{e}"));
        let azd = AzureDeveloperCli::new().with_tenant(tenant);
        assert_eq!(
            azd.command().args,
            [
                "auth",
                "token",
                "--output",
                "json",
                "--no-prompt",
                "--scope",
                "https://redis.azure.com/.default",
                "--tenant-id",
                "t1"
            ]
        );
        let token = azd.parse_output(&ok(
            r#"{"token":"eyJ.a.b","expiresOn":"2026-01-01T00:00:00Z"}"#,
        ));
        assert_eq!(token.ok().and_then(|t| t.expires_on), Some(1_767_225_600));
        let login = azd.parse_output(&failed(
            1,
            "ERROR: fetching token: not logged in, run `azd auth login` to login",
        ));
        assert!(login.is_err_and(|e| e.to_string().contains("azd auth login")));
    }

    #[test]
    fn output_debug_hides_the_token() {
        let printed = format!("{:?}", ok(r#"{"accessToken":"eyJ.secret"}"#));
        assert!(!printed.contains("eyJ"), "{printed}");
    }
}
