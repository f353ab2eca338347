//! `redis-entraid`: diagnose, watch and measure Microsoft Entra ID authentication to Redis
//!
//! - `token`: one token, fetched as the library fetches it, and what is in it;
//! - `check <url>`: identity, token, DNS, TCP, TLS, AUTH, PING and re-AUTH, step by step;
//! - `watch <url>`: the provider and N connections live, with a summary (and Prometheus);
//! - `emulator`: the local Azure look-alike; `demo`: the README's demo.
//!
//! Exit status: 0 when everything asked for worked, 1 when what was checked failed, 2 for a
//! usage error (bad argument, bad URL, missing variable).

mod acquire;
mod advice;
mod check;
mod emulator;
mod error;
mod resp;
mod source;
mod style;
mod token;
mod watch;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::CliError;
use crate::source::SourceArg;
use crate::style::Style;

/// Diagnose, watch and measure Microsoft Entra ID authentication to Azure Redis
#[derive(Debug, Parser)]
#[command(name = "redis-entraid", version, propagate_version = true)]
struct Cli {
    /// Log filter for the library's own tracing output on stderr (e.g. `info`,
    /// `redis_entraid_blocking=debug`); off by default
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct SourceOpts {
    /// Which identity to use; `default` is the chain the library uses (environment, workload
    /// identity, managed identity, Azure CLI, azd)
    #[arg(long, value_enum, default_value_t = SourceArg::Default)]
    source: SourceArg,
    /// Request this scope instead of Redis's (to reproduce an application's setting; needs an
    /// explicit --source)
    #[arg(long, value_name = "SCOPE")]
    scope: Option<String>,
    /// How long a token request may take
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Refresh and retry settings of `watch`: the library's defaults unless given
#[derive(Debug, clap::Args)]
struct TuningOpts {
    /// Refresh when this fraction of a token's lifetime has passed (default 0.7)
    #[arg(long, value_name = "RATIO")]
    refresh_ratio: Option<f64>,
    /// Refresh at least this long before expiry (default 3m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lower_bound: Option<Duration>,
    /// Never fetch more often than this (default 10s)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    min_interval: Option<Duration>,
    /// First retry delay after a failed fetch (default 1s)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retry_initial: Option<Duration>,
    /// Longest retry delay (default 30s)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retry_max: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Acquire one token exactly as the library would, and show who it is for
    Token {
        #[command(flatten)]
        source: SourceOpts,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
        /// Also print the access token itself (a secret: it is said on stderr)
        #[arg(long)]
        show_token: bool,
    },
    /// Check the whole path to a cache, step by step, with advice for each failure
    Check {
        /// The cache, e.g. rediss://my-cache.westeurope.redis.azure.net:10000
        url: String,
        #[command(flatten)]
        source: SourceOpts,
        /// Connect to this address instead of resolving the host: HOST:IP (TLS still checks
        /// the name HOST)
        #[arg(long, value_name = "HOST:IP")]
        resolve: Option<String>,
        /// Also trust the CA certificates in this PEM file (SSL_CERT_FILE is always trusted)
        #[arg(long, value_name = "PEM")]
        ca_file: Option<std::path::PathBuf>,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
    /// Run the provider and N connections, and show token health live
    Watch {
        /// The cache, e.g. rediss://my-cache.westeurope.redis.azure.net:10000
        url: String,
        #[command(flatten)]
        source: SourceOpts,
        /// How many connections to keep busy
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Stop after this long (e.g. 90s, 10m); runs until Ctrl-C without it
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Pause between one connection's commands
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        interval: Duration,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464)
        #[arg(long, value_name = "ADDR")]
        prometheus: Option<std::net::SocketAddr>,
        /// One line per event even on a terminal
        #[arg(long)]
        plain: bool,
        /// Print the summary as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tuning: TuningOpts,
    },
    /// Run the local Azure emulator and print the environment a client needs
    Emulator(emulator::EmulatorArgs),
    /// The README's demo: four connections through token rotations and an identity outage
    Demo {
        /// How long to run
        #[arg(long, default_value = "24s", value_parser = parse_duration)]
        duration: Duration,
    },
}

/// `500ms`, `30s`, `5m`, `1h`, or plain seconds
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration (e.g. 500ms, 30s, 5m)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {raw:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|e| format!("{raw:?}: {e}"))
}

fn main() {
    let cli = Cli::parse();
    if let Some(filter) = &cli.log {
        let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
            report(&CliError::usage(format!("--log {filter:?} is not a log filter")).cause(e));
            std::process::exit(error::EXIT_USAGE);
        });
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(Style::stderr().is_on())
            .init();
    }
    let result = match cli.command {
        Command::Token {
            source,
            json,
            show_token,
        } => token::run(
            source.source,
            source.scope.as_deref(),
            source.timeout,
            json,
            show_token,
        ),
        Command::Check {
            url,
            source,
            resolve,
            ca_file,
            json,
        } => check::run(&check::CheckArgs {
            url,
            source: source.source,
            scope: source.scope,
            resolve,
            ca_file,
            timeout: source.timeout,
            json,
        }),
        Command::Watch {
            url,
            source,
            connections,
            duration,
            interval,
            prometheus,
            plain,
            json,
            tuning,
        } => watch::run(&watch::WatchArgs {
            url,
            source: source.source,
            scope: source.scope,
            timeout: source.timeout,
            connections,
            duration,
            interval,
            prometheus,
            plain,
            json,
            tuning: watch::Tuning {
                refresh_ratio: tuning.refresh_ratio,
                lower_bound: tuning.lower_bound,
                min_interval: tuning.min_interval,
                retry_initial: tuning.retry_initial,
                retry_max: tuning.retry_max,
            },
            env: None,
        }),
        Command::Emulator(args) => emulator::run(&args),
        Command::Demo { duration } => emulator::demo(duration),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            report(&e);
            std::process::exit(e.exit_code());
        }
    }
}

/// One line for the error and its causes, one for the advice
fn report(e: &CliError) {
    let err = Style::stderr();
    eprintln!("{} {e}", err.red("error:"));
    if let Some(advice) = e.advice_text() {
        eprintln!("{} {advice}", err.bold("hint:"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "-1s", "5d", "s", "1e999s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
