//! `redis-entraid emulator` and `redis-entraid demo`: the local Azure look-alike, alone or with
//! a watched client through token rotations and an identity outage

use std::time::Duration;

use redis_entraid_emulator::{Emulator, Endpoint, Fault, FaultKind};

use crate::error::CliError;
use crate::source::SourceArg;
use crate::watch::{self, Tuning, WatchArgs};

/// Options of `redis-entraid emulator`
#[derive(Debug, clap::Args)]
pub(crate) struct EmulatorArgs {
    /// Lifetime of every access token, seconds
    #[arg(long, value_name = "S", default_value_t = 3600)]
    token_lifetime: u64,
    /// Also start a Redis cluster of N primaries behind enforcing proxies
    #[arg(long, value_name = "N", default_value_t = 0)]
    cluster: usize,
    /// Inject a fault into the identity endpoints: STATUS (503), 429:RETRY_AFTER_S,
    /// delay:MS, close, malformed, no-oid, expired, invalid-client; then optionally xCOUNT
    /// and @imds|@app-service|@entra (e.g. 503x3@imds); repeatable, or comma-separated
    #[arg(long = "fault", visible_alias = "faults", value_name = "SPEC", value_delimiter = ',', value_parser = parse_fault)]
    faults: Vec<Fault>,
    /// Port of the plain HTTP endpoints (0: any free port)
    #[arg(long, default_value_t = 0)]
    http_port: u16,
    /// Port of the HTTPS endpoints (0: any free port)
    #[arg(long, default_value_t = 0)]
    https_port: u16,
    /// Port of the plain Redis proxy (0: any free port)
    #[arg(long, default_value_t = 0)]
    redis_port: u16,
    /// Port of the TLS Redis proxy (0: any free port)
    #[arg(long, default_value_t = 0)]
    redis_tls_port: u16,
    /// Identity endpoints only, no redis-server
    #[arg(long)]
    no_redis: bool,
    /// Stop after this long instead of at Ctrl-C
    #[arg(long, value_parser = crate::parse_duration)]
    duration: Option<Duration>,
}

/// A fault from its command-line spelling
fn parse_fault(raw: &str) -> Result<Fault, String> {
    let (rest, endpoint) = match raw.rsplit_once('@') {
        Some((rest, e)) => (
            rest,
            Some(match e {
                "imds" => Endpoint::Imds,
                "app-service" => Endpoint::AppService,
                "entra" => Endpoint::Entra,
                other => {
                    return Err(format!(
                        "unknown endpoint {other:?} (imds, app-service, entra)"
                    ))
                }
            }),
        ),
        None => (raw, None),
    };
    let (kind, count) = match rest.rsplit_once('x') {
        Some((kind, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
            (kind, n.parse::<u32>().map_err(|e| format!("{n:?}: {e}"))?)
        }
        _ => (rest, 1),
    };
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a number in fault {raw:?}"))
    };
    let kind = match kind.split_once(':') {
        Some(("429", secs)) => FaultKind::TooManyRequests {
            retry_after_secs: number(secs)?,
        },
        Some(("delay", ms)) => FaultKind::Delay {
            millis: number(ms)?,
        },
        None if kind.len() == 3 && kind.chars().all(|c| c.is_ascii_digit()) => FaultKind::Status {
            status: u16::try_from(number(kind)?).map_err(|e| e.to_string())?,
        },
        None => match kind {
            "close" => FaultKind::CloseConnection,
            "malformed" => FaultKind::MalformedBody,
            "no-oid" => FaultKind::TokenWithoutOid,
            "expired" => FaultKind::ExpiredToken,
            "invalid-client" => FaultKind::InvalidClient,
            other => return Err(format!("unknown fault {other:?}")),
        },
        Some((other, _)) => return Err(format!("unknown fault {other:?}")),
    };
    let mut fault = Fault::new(kind).times(count);
    if let Some(e) = endpoint {
        fault = fault.only(e);
    }
    Ok(fault)
}

fn start_error(e: redis_entraid_emulator::Error) -> CliError {
    CliError::failed("the emulator did not start")
        .cause(e)
        .advice("install redis-server (bash .ci/install-redis.sh) or pass --no-redis; check the ports are free")
}

/// Runs the emulator, printing `export` lines, until Ctrl-C or `--duration`
///
/// # Errors
/// When the emulator cannot start.
pub(crate) fn run(args: &EmulatorArgs) -> Result<i32, CliError> {
    let mut b = Emulator::builder()
        .token_lifetime(Duration::from_secs(args.token_lifetime.max(1)))
        .cluster(args.cluster)
        .http_port(args.http_port)
        .https_port(args.https_port)
        .redis_port(args.redis_port)
        .redis_tls_port(args.redis_tls_port);
    if args.no_redis {
        b = b.without_redis();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed("cannot start a runtime for the emulator").cause(e))?;
    rt.block_on(async {
        let emu = b.start().await.map_err(start_error)?;
        for fault in &args.faults {
            emu.faults().inject(fault.clone());
        }
        for (k, v) in emu.env() {
            println!("export {k}='{v}'");
        }
        if let Some(addr) = emu.redis_tls_addr() {
            println!(
                "# check it: redis-entraid check rediss://localhost:{}",
                addr.port()
            );
        }
        println!("# control API: {}/_emulator/counters", emu.http_base());
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        match args.duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        eprintln!("counters: {:?}", emu.counters());
        Ok(0)
    })
}

/// The README's demo: six-second tokens, four connections, two identity failures halfway
///
/// # Errors
/// When the emulator cannot start or the watch cannot run.
pub(crate) fn demo(duration: Duration) -> Result<i32, CliError> {
    let emu = Emulator::start_blocking(Emulator::builder().token_lifetime(Duration::from_secs(6)))
        .map_err(start_error)?;
    let redis = emu
        .redis_addr()
        .ok_or_else(|| CliError::failed("the emulator has no Redis proxy"))?;
    println!(
        "emulator up: IMDS at {}, Redis proxy at {redis}; tokens live 6 s and the proxy closes any connection whose token expires",
        emu.imds_endpoint()
    );
    // What an Azure VM's environment would hold, pointed at the emulator (handed over as a
    // map: changing the process environment while threads run is a data race).
    let env = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
        emu.imds_endpoint(),
    )]
    .into();
    let faults = emu.faults().clone();
    let half = duration / 2;
    std::thread::spawn(move || {
        std::thread::sleep(half);
        println!("-- the identity endpoint will now fail twice with 503 --");
        faults.inject(Fault::status(503).times(2).only(Endpoint::Imds));
    });
    let code = watch::run(&WatchArgs {
        url: format!("redis://{redis}"),
        source: SourceArg::Imds,
        scope: None,
        timeout: Duration::from_secs(2),
        connections: 4,
        duration: Some(duration),
        interval: Duration::from_millis(100),
        prometheus: None,
        plain: false,
        json: false,
        tuning: Tuning {
            refresh_ratio: Some(0.6),
            lower_bound: Some(Duration::from_secs(2)),
            min_interval: Some(Duration::from_millis(500)),
            retry_initial: Some(Duration::from_millis(200)),
            retry_max: Some(Duration::from_secs(1)),
        },
        env: Some(env),
    })?;
    let c = emu.counters();
    println!(
        "  {:<24}{}\n  {:<24}{}\n  {:<24}{}",
        "proxy AUTH accepted",
        c.redis_auth_ok,
        "identity faults served",
        c.faults_served,
        "closed for expiry",
        c.redis_closed_for_expiry
    );
    Ok(if c.redis_closed_for_expiry > 0 {
        crate::error::EXIT_FAILED
    } else {
        code
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_read_kind_count_and_endpoint() {
        assert_eq!(parse_fault("503").unwrap(), Fault::status(503));
        assert_eq!(
            parse_fault("503x3@imds").unwrap(),
            Fault::status(503).times(3).only(Endpoint::Imds)
        );
        assert_eq!(parse_fault("429:7").unwrap(), Fault::too_many_requests(7));
        assert_eq!(
            parse_fault("delay:250x2").unwrap(),
            Fault::delay(Duration::from_millis(250)).times(2)
        );
        assert_eq!(
            parse_fault("no-oid@entra").unwrap(),
            Fault::new(FaultKind::TokenWithoutOid).only(Endpoint::Entra)
        );
        for bad in ["", "teapot", "503@moon", "delay:soon", "99999", "429:"] {
            assert!(parse_fault(bad).is_err(), "{bad}");
        }
    }
}
