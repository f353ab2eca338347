//! `redis-entraid check <url>`: the whole path from identity to `PING`, step by step, each with
//! a verdict, its timing and, on failure, one sentence of advice

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_entraid_core::identity::env::EnvSource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use crate::acquire::{self, Acquired, REDIS_AUDIENCE};
use crate::advice;
use crate::error::CliError;
use crate::resp::{Connection, Reply, Stream};
use crate::source::{self, ProcessEnv, SourceArg};
use crate::style::Style;

/// What `check` was asked to do
pub(crate) struct CheckArgs {
    pub(crate) url: String,
    pub(crate) source: SourceArg,
    pub(crate) scope: Option<String>,
    pub(crate) resolve: Option<String>,
    pub(crate) ca_file: Option<std::path::PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

struct Step {
    name: &'static str,
    verdict: Verdict,
    took: Option<Duration>,
    summary: String,
    details: Vec<String>,
    advice: Option<String>,
}

impl Step {
    fn new(name: &'static str, verdict: Verdict, summary: impl Into<String>) -> Self {
        Self {
            name,
            verdict,
            took: None,
            summary: summary.into(),
            details: Vec::new(),
            advice: None,
        }
    }

    fn took(mut self, took: Duration) -> Self {
        self.took = Some(took);
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.details.push(detail.into());
        self
    }

    fn advice(mut self, advice: impl Into<String>) -> Self {
        self.advice = Some(advice.into());
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "step": self.name,
            "verdict": self.verdict.word().to_ascii_lowercase(),
            "ms": self.took.map(|t| t.as_secs_f64() * 1000.0),
            "summary": self.summary,
            "details": self.details,
            "advice": self.advice,
        })
    }
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// The URL named the port (Azure's are never Redis's default 6379)
    port_given: bool,
}

/// Reads a `redis://` or `rediss://` URL
///
/// # Errors
/// A usage error for anything else.
fn parse_url(raw: &str) -> Result<Target, CliError> {
    let url = url::Url::parse(raw).map_err(|e| {
        CliError::usage(format!("{raw:?} is not a Redis URL"))
            .cause(e)
            .advice("write it as rediss://<cache-name>.<region>.redis.azure.net:10000")
    })?;
    let tls = match url.scheme() {
        "rediss" => true,
        "redis" => false,
        other => {
            return Err(CliError::usage(format!(
                "{raw:?} has scheme {other}:, not redis: or rediss:"
            ))
            .advice("write it as rediss://<cache-name>.<region>.redis.azure.net:10000"))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| CliError::usage(format!("{raw:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Target {
        tls,
        host,
        port: url.port().unwrap_or(6379),
        port_given: url.port().is_some(),
    })
}

/// Runs every step; returns the exit status (0 only when everything passed)
///
/// # Errors
/// A usage error (bad URL, unknown source configuration) before any step runs.
pub(crate) fn run(args: &CheckArgs) -> Result<i32, CliError> {
    let target = parse_url(&args.url)?;
    let override_addr = args
        .resolve
        .as_deref()
        .map(|r| parse_resolve(r, &target))
        .transpose()?;
    let out = Style::stdout();
    let mut steps = Vec::new();
    let mut emit = |step: Step, steps: &mut Vec<Step>| {
        if !args.json {
            print_step(&step, out);
        }
        steps.push(step);
    };
    if !args.json {
        println!(
            "{} {}://{}:{} ({})",
            out.bold("checking"),
            if target.tls { "rediss" } else { "redis" },
            target.host,
            target.port,
            args.source
        );
    }

    // 1. Identity resolution: what the environment configures, before any request.
    let identity = identity_step(args.source);
    let source = source::token_source(args.source, args.scope.as_deref());
    let identity = match &source {
        Ok(s) if args.source != SourceArg::Default => {
            identity.detail(format!("token source: {}", s.name()))
        }
        Ok(_) => identity,
        Err(e) => {
            let advice = e
                .advice_text()
                .unwrap_or(
                    "set the variables the chosen source needs (see `redis-entraid token --help`)",
                )
                .to_owned();
            let mut step = identity;
            step.verdict = Verdict::Fail;
            step.summary = e.to_string();
            step.advice(advice)
        }
    };
    emit(identity, &mut steps);

    // 2. Token.
    let imds = source.as_ref().is_ok_and(acquire::is_imds);
    let fetcher = match source {
        Ok(source) => Some(acquire::fetcher(source)?),
        Err(_) => None,
    };
    let first = fetcher.as_ref().map(|f| acquire::acquire(f, args.timeout));
    let token: Option<&Acquired> = match &first {
        None => {
            emit(
                Step::new("token", Verdict::Skip, "no token source"),
                &mut steps,
            );
            None
        }
        Some(Err((error, took))) => {
            emit(
                Step::new("token", Verdict::Fail, crate::error::chain(error))
                    .took(*took)
                    .advice(advice::for_fetch(error, imds)),
                &mut steps,
            );
            None
        }
        Some(Ok(acquired)) => {
            let mut step = token_step(acquired);
            if args.source == SourceArg::Default {
                // The chain tries its configured steps in order: those before the winner were
                // tried and found unavailable.
                if let Ok(chain) = source::chain_steps() {
                    let before: Vec<_> = chain
                        .iter()
                        .filter_map(|(name, s)| s.as_ref().ok().map(|src| (*name, src)))
                        .take_while(|(_, src)| **src != acquired.answered_by)
                        .map(|(name, _)| name)
                        .collect();
                    if !before.is_empty() {
                        step =
                            step.detail(format!("tried first, unavailable: {}", before.join(", ")));
                    }
                }
            }
            emit(step, &mut steps);
            Some(acquired)
        }
    };

    // 3-5. DNS, TCP, TLS: independent of the token, so they run even when it failed.
    let addrs = dns_step(&target, override_addr, &mut steps, &mut emit);
    let tcp =
        addrs.and_then(|addrs| tcp_step(&target, &addrs, args.timeout, &mut steps, &mut emit));
    let stream: Option<Box<dyn Stream>> = match tcp {
        None => {
            if target.tls {
                emit(
                    Step::new("tls", Verdict::Skip, "no TCP connection"),
                    &mut steps,
                );
            }
            None
        }
        Some(tcp) if target.tls => {
            tls_step(&target, tcp, args.ca_file.as_deref(), &mut steps, &mut emit)
        }
        Some(tcp) => {
            emit(
                Step::new("tls", Verdict::Warn, "plain redis:// (no TLS)").advice(
                    "Azure caches require TLS: use rediss:// (plain TCP only works against local emulators)",
                ),
                &mut steps,
            );
            Some(Box::new(tcp))
        }
    };

    // 6-8. AUTH, PING, re-AUTH: need both a token and a connection.
    match (stream, token) {
        (Some(stream), Some(acquired)) => {
            redis_steps(
                stream,
                acquired,
                fetcher.as_ref(),
                imds,
                args.timeout,
                &mut steps,
                &mut emit,
            );
        }
        (_, None) => {
            for name in ["auth", "ping", "re-auth"] {
                emit(Step::new(name, Verdict::Skip, "no token"), &mut steps);
            }
        }
        (None, _) => {
            for name in ["auth", "ping", "re-auth"] {
                emit(Step::new(name, Verdict::Skip, "no connection"), &mut steps);
            }
        }
    }

    let ok = steps
        .iter()
        .all(|s| matches!(s.verdict, Verdict::Pass | Verdict::Warn));
    if args.json {
        let report = json!({
            "url": format!("{}://{}:{}", if target.tls { "rediss" } else { "redis" }, target.host, target.port),
            "ok": ok,
            "steps": steps.iter().map(Step::to_json).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if ok {
        println!("{}", out.green("all checks passed"));
    } else {
        let failed: Vec<_> = steps
            .iter()
            .filter(|s| s.verdict == Verdict::Fail)
            .map(|s| s.name)
            .collect();
        println!("{} {}", out.red("failed:"), failed.join(", "));
    }
    Ok(if ok { 0 } else { crate::error::EXIT_FAILED })
}

fn parse_resolve(raw: &str, target: &Target) -> Result<SocketAddr, CliError> {
    let usage = || {
        CliError::usage(format!("--resolve {raw:?} is not HOST:ADDRESS"))
            .advice("write it as --resolve my-cache.redis.azure.net:10.0.0.5")
    };
    let (host, addr) = raw.split_once(':').ok_or_else(usage)?;
    if !host.eq_ignore_ascii_case(&target.host) {
        return Err(CliError::usage(format!(
            "--resolve names {host}, but the URL's host is {}",
            target.host
        )));
    }
    let ip: std::net::IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| usage())?;
    Ok(SocketAddr::new(ip, target.port))
}

fn identity_step(source: SourceArg) -> Step {
    let seen = source::variables_seen();
    let mut step = Step::new("identity", Verdict::Pass, "");
    let vars: Vec<String> = seen
        .iter()
        .map(|(name, value)| match value {
            Some(v) => format!("{name}={v}"),
            None => format!("{name}=(set, hidden)"),
        })
        .collect();
    step = step.detail(if vars.is_empty() {
        "no identity variables are set".to_owned()
    } else {
        format!("variables: {}", vars.join(" "))
    });
    if source == SourceArg::Default {
        match source::chain_steps() {
            Ok(chain) => {
                let configured: Vec<_> = chain
                    .iter()
                    .filter(|(_, s)| s.is_ok())
                    .map(|(n, _)| *n)
                    .collect();
                step.summary = format!("default chain; will try: {}", configured.join(" -> "));
                for (name, s) in chain {
                    step = step.detail(match s {
                        Ok(src) => format!("{name}: configured ({src})"),
                        Err(why) => format!("{name}: skipped: {why}"),
                    });
                }
            }
            Err(e) => {
                step.verdict = Verdict::Fail;
                step.summary = e.to_string();
                step.advice = Some(
                    "fix or unset AZURE_TOKEN_CREDENTIALS (dev, prod, or one credential name)"
                        .to_owned(),
                );
            }
        }
    } else {
        step.summary = format!("--source {source}");
    }
    step
}

fn token_step(acquired: &Acquired) -> Step {
    let c = &acquired.claims;
    let mut step = Step::new(
        "token",
        Verdict::Pass,
        format!(
            "from {}; oid {} (the Redis username)",
            acquired.answered_by,
            c.oid.as_deref().unwrap_or("(none)")
        ),
    )
    .took(acquired.took)
    .detail(format!(
        "aud {}; tid {}; app {}; lifetime left {}",
        if c.aud.is_empty() {
            "(none)".to_owned()
        } else {
            c.aud.join(",")
        },
        c.tid.as_deref().unwrap_or("(none)"),
        c.app.as_deref().unwrap_or("(none)"),
        acquired
            .lifetime_left()
            .map_or_else(|| "unknown".to_owned(), |s| format!("{s}s"))
    ));
    if !c.audience_is_redis() {
        step.verdict = Verdict::Fail;
        step.summary = format!(
            "the token's audience is {}, not {REDIS_AUDIENCE}",
            if c.aud.is_empty() {
                "missing".to_owned()
            } else {
                c.aud.join(",")
            }
        );
        step.advice = Some(format!(
            "request the scope {REDIS_AUDIENCE}/.default (resource {REDIS_AUDIENCE}): the application's scope setting is wrong"
        ));
    } else if c.oid.is_none() {
        step.verdict = Verdict::Fail;
        step.summary = "the token has no oid claim: Redis has no username for it".to_owned();
        step.advice = Some("use a managed identity or service principal token (user tokens from another tenant may lack oid)".to_owned());
    } else if acquired.lifetime_left().is_some_and(|s| s < 300) {
        step.verdict = Verdict::Warn;
        step.advice = Some("the token has less than 5 minutes left: the endpoint serves a stale cached token, or the host clock is off".to_owned());
    }
    step
}

fn dns_step(
    target: &Target,
    override_addr: Option<SocketAddr>,
    steps: &mut Vec<Step>,
    emit: &mut impl FnMut(Step, &mut Vec<Step>),
) -> Option<Vec<SocketAddr>> {
    if let Some(addr) = override_addr {
        emit(
            Step::new(
                "dns",
                Verdict::Pass,
                format!("{} -> {} (--resolve)", target.host, addr.ip()),
            ),
            steps,
        );
        return Some(vec![addr]);
    }
    let started = Instant::now();
    match (target.host.as_str(), target.port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            let took = started.elapsed();
            if addrs.is_empty() {
                emit(
                    Step::new(
                        "dns",
                        Verdict::Fail,
                        format!("{} has no address", target.host),
                    )
                    .took(took)
                    .advice("check the cache's host name in the portal"),
                    steps,
                );
                return None;
            }
            let list: Vec<_> = addrs.iter().map(|a| a.ip().to_string()).collect();
            let private = addrs.iter().any(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => v4.is_private(),
                std::net::IpAddr::V6(_) => false,
            });
            let mut step = Step::new(
                "dns",
                Verdict::Pass,
                format!("{} -> {}", target.host, list.join(", ")),
            )
            .took(took);
            if private {
                step = step
                    .detail("a private address: the cache is reached through a private endpoint");
            }
            emit(step, steps);
            Some(addrs)
        }
        Err(e) => {
            emit(
                Step::new("dns", Verdict::Fail, format!("cannot resolve {}: {e}", target.host))
                    .took(started.elapsed())
                    .advice("check the host name (…redis.azure.net for Azure Managed Redis), and for a private endpoint that this host uses the private DNS zone"),
                steps,
            );
            None
        }
    }
}

fn tcp_step(
    target: &Target,
    addrs: &[SocketAddr],
    timeout: Duration,
    steps: &mut Vec<Step>,
    emit: &mut impl FnMut(Step, &mut Vec<Step>),
) -> Option<TcpStream> {
    let started = Instant::now();
    let mut errors = Vec::new();
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(timeout));
                let _ = stream.set_write_timeout(Some(timeout));
                let _ = stream.set_nodelay(true);
                let mut step = Step::new("tcp", Verdict::Pass, format!("connected to {addr}"))
                    .took(started.elapsed());
                if !target.port_given {
                    step = step.detail("no port in the URL, so 6379; Azure Managed Redis listens on 10000, Azure Cache for Redis on 6380 (TLS)");
                }
                emit(step, steps);
                return Some(stream);
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    let refused = errors.iter().any(|e| e.contains("refused"));
    let advice = if refused {
        format!(
            "nothing listens on port {} there: Azure Managed Redis uses 10000, Azure Cache for Redis 6380 (TLS); check the port",
            target.port
        )
    } else {
        "the port is unreachable: check firewalls, network security groups, the cache's public network access or private endpoint".to_owned()
    };
    emit(
        Step::new(
            "tcp",
            Verdict::Fail,
            format!("cannot connect: {}", errors.join("; ")),
        )
        .took(started.elapsed())
        .advice(advice),
        steps,
    );
    None
}

/// Web PKI roots plus `SSL_CERT_FILE` and `--ca-file`
fn root_store(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let env_file = ProcessEnv
        .get("SSL_CERT_FILE")
        .map(std::path::PathBuf::from);
    for path in env_file.iter().map(|p| p.as_path()).chain(ca_file) {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("a certificate in {} is unusable: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

fn tls_step(
    target: &Target,
    mut tcp: TcpStream,
    ca_file: Option<&std::path::Path>,
    steps: &mut Vec<Step>,
    emit: &mut impl FnMut(Step, &mut Vec<Step>),
) -> Option<Box<dyn Stream>> {
    let started = Instant::now();
    let fail = |summary: String, advice: &str| {
        Step::new("tls", Verdict::Fail, summary)
            .took(started.elapsed())
            .advice(advice)
    };
    let roots = match root_store(ca_file) {
        Ok(roots) => roots,
        Err(e) => {
            emit(
                fail(e, "point SSL_CERT_FILE / --ca-file at a readable PEM file"),
                steps,
            );
            return None;
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => {
            emit(
                fail(format!("TLS setup failed: {e}"), "report this as a bug"),
                steps,
            );
            return None;
        }
    };
    let name = match ServerName::try_from(target.host.clone()) {
        Ok(name) => name,
        Err(e) => {
            emit(
                fail(
                    format!("{} is not a valid TLS server name: {e}", target.host),
                    "use the cache's host name",
                ),
                steps,
            );
            return None;
        }
    };
    let mut conn = match rustls::ClientConnection::new(Arc::new(config), name) {
        Ok(c) => c,
        Err(e) => {
            emit(
                fail(format!("TLS setup failed: {e}"), "report this as a bug"),
                steps,
            );
            return None;
        }
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let tls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            let (summary, advice) = match &tls_error {
                Some(rustls::Error::InvalidCertificate(cert)) => {
                    let text = format!("{cert:?}");
                    if text.contains("NotValidForName") {
                        (
                            format!("the server's certificate is not valid for {}: {cert}", target.host),
                            "connect with the cache's own host name (…redis.azure.net), not an IP or alias; with a private endpoint keep the name and use private DNS (or --resolve to test)",
                        )
                    } else if text.contains("UnknownIssuer") {
                        (
                            format!("the server's certificate is signed by an unknown CA: {cert}"),
                            "a TLS-intercepting proxy or a private CA is in the path: trust its CA with SSL_CERT_FILE or --ca-file",
                        )
                    } else if text.contains("Expired") || text.contains("NotValidYet") {
                        (
                            format!("the server's certificate is not valid now: {cert}"),
                            "check this host's clock (NTP)",
                        )
                    } else {
                        (format!("certificate verification failed: {cert}"), "check the certificate chain the server sends")
                    }
                }
                Some(other) => (format!("TLS handshake failed: {other}"), "the port may not speak TLS: check it is the cache's TLS port"),
                None => (format!("TLS handshake failed: {e}"), "the port may not speak TLS: check it is the cache's TLS port (10000 for Azure Managed Redis)"),
            };
            emit(fail(summary, advice), steps);
            return None;
        }
    }
    let version = conn
        .protocol_version()
        .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
    emit(
        Step::new(
            "tls",
            Verdict::Pass,
            format!("{version}, certificate valid for {}", target.host),
        )
        .took(started.elapsed()),
        steps,
    );
    Some(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

fn redis_steps(
    stream: Box<dyn Stream>,
    acquired: &Acquired,
    fetcher: Option<&redis_entraid_blocking::IdentityFetcher>,
    imds: bool,
    timeout: Duration,
    steps: &mut Vec<Step>,
    emit: &mut impl FnMut(Step, &mut Vec<Step>),
) {
    let mut conn = Connection::new(stream);
    let claims = &acquired.claims;
    let user = claims.oid.clone().unwrap_or_default();
    let io_fail = |name: &'static str, e: std::io::Error, took: Duration| {
        Step::new(name, Verdict::Fail, format!("the connection failed: {e}"))
            .took(took)
            .advice("the server closed the connection: check the port is the cache's Redis port and that it accepts TLS/plain as given")
    };
    // HELLO 3 AUTH, falling back to AUTH for servers without RESP3.
    let started = Instant::now();
    let token = acquired.token.access_token.expose_secret();
    let mut reply = conn.call(&["HELLO", "3", "AUTH", &user, token]);
    let mut command = "HELLO 3 AUTH";
    if matches!(&reply, Ok(Reply::Error(e)) if e.starts_with("NOPROTO") || e.to_ascii_lowercase().contains("unknown command"))
    {
        command = "AUTH";
        reply = conn.call(&["AUTH", &user, token]);
    }
    let took = started.elapsed();
    match reply {
        Ok(Reply::Error(e)) => {
            emit(
                Step::new(
                    "auth",
                    Verdict::Fail,
                    format!("{command} as {user} refused: {e}"),
                )
                .took(took)
                .advice(advice::for_auth_reply(
                    &e,
                    claims.oid.as_deref(),
                    claims.audience_is_redis(),
                )),
                steps,
            );
            for name in ["ping", "re-auth"] {
                emit(Step::new(name, Verdict::Skip, "not authenticated"), steps);
            }
            return;
        }
        Err(e) => {
            emit(io_fail("auth", e, took), steps);
            for name in ["ping", "re-auth"] {
                emit(Step::new(name, Verdict::Skip, "no connection"), steps);
            }
            return;
        }
        Ok(_) => emit(
            Step::new("auth", Verdict::Pass, format!("{command} as {user}: OK")).took(took),
            steps,
        ),
    }
    let ping = |conn: &mut Connection| {
        let started = Instant::now();
        (conn.call(&["PING"]), started.elapsed())
    };
    match ping(&mut conn) {
        (Ok(Reply::Text(t)), took) if t == "PONG" => {
            emit(Step::new("ping", Verdict::Pass, "PONG").took(took), steps)
        }
        (Ok(other), took) => {
            emit(
                Step::new("ping", Verdict::Fail, format!("unexpected reply {other:?}"))
                    .took(took)
                    .advice("the identity's access policy may not allow PING: give it a data access policy with connection commands"),
                steps,
            );
            emit(Step::new("re-auth", Verdict::Skip, "PING failed"), steps);
            return;
        }
        (Err(e), took) => {
            emit(io_fail("ping", e, took), steps);
            emit(Step::new("re-auth", Verdict::Skip, "no connection"), steps);
            return;
        }
    }
    // Re-AUTH with a second token, as the library does at each rotation.
    let Some(fetcher) = fetcher else { return };
    let started = Instant::now();
    let second = match acquire::acquire(fetcher, timeout) {
        Ok(second) => second,
        Err((error, took)) => {
            emit(
                Step::new(
                    "re-auth",
                    Verdict::Fail,
                    format!(
                        "the second token request failed: {}",
                        crate::error::chain(&error)
                    ),
                )
                .took(took)
                .advice(advice::for_fetch(&error, imds)),
                steps,
            );
            return;
        }
    };
    let same = second.token.access_token.expose_secret() == token;
    let reply = conn.call(&["AUTH", &user, second.token.access_token.expose_secret()]);
    let after = conn.call(&["PING"]);
    let took = started.elapsed();
    match (reply, after) {
        (Ok(Reply::Text(_)), Ok(Reply::Text(p))) if p == "PONG" => {
            let mut step = Step::new(
                "re-auth",
                Verdict::Pass,
                "AUTH with a second token: OK, then PONG",
            )
            .took(took);
            if same {
                step = step.detail("the endpoint returned the same (cached) token; the library only pushes newer tokens");
            }
            emit(step, steps);
        }
        (Ok(Reply::Error(e)), _) => emit(
            Step::new(
                "re-auth",
                Verdict::Fail,
                format!("AUTH with a second token refused: {e}"),
            )
            .took(took)
            .advice(advice::for_auth_reply(
                &e,
                second.claims.oid.as_deref(),
                second.claims.audience_is_redis(),
            )),
            steps,
        ),
        (Err(e), _) | (_, Err(e)) => emit(io_fail("re-auth", e, took), steps),
        (reply, after) => emit(
            Step::new(
                "re-auth",
                Verdict::Fail,
                format!("unexpected replies {reply:?}, {after:?}"),
            )
            .took(took)
            .advice("the server does not behave like Redis: check the URL"),
            steps,
        ),
    }
}

fn print_step(step: &Step, out: Style) {
    let mark = match step.verdict {
        Verdict::Pass => out.green("ok  "),
        Verdict::Warn => out.yellow("warn"),
        Verdict::Fail => out.red("FAIL"),
        Verdict::Skip => out.dim("skip"),
    };
    let took = step.took.map_or_else(
        || "       ".to_owned(),
        |t| format!("{:>5.0}ms", t.as_secs_f64() * 1000.0),
    );
    println!("{mark} {:<9}{} {}", step.name, out.dim(&took), step.summary);
    for detail in &step.details {
        println!("               {}", out.dim(detail));
    }
    if let Some(advice) = &step.advice {
        println!("               {} {advice}", out.bold("->"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_tls_host_and_port() {
        let t = parse_url("rediss://my-cache.redis.azure.net:10000").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port),
            ("my-cache.redis.azure.net", 10000)
        );
        let t = parse_url("redis://127.0.0.1").unwrap();
        assert!(!t.tls);
        assert_eq!(t.port, 6379);
        let t = parse_url("rediss://[::1]:6380").unwrap();
        assert_eq!(t.host, "::1");
        for bad in [
            "",
            "my-cache:10000",
            "https://x",
            "rediss://",
            "rediss://h:70000",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_must_name_the_urls_host_and_an_ip() {
        let t = parse_url("rediss://cache.example:10000").unwrap();
        assert_eq!(
            parse_resolve("cache.example:10.0.0.5", &t).unwrap(),
            "10.0.0.5:10000".parse().unwrap()
        );
        assert!(parse_resolve("other.example:10.0.0.5", &t).is_err());
        assert!(parse_resolve("cache.example:not-an-ip", &t).is_err());
        assert!(parse_resolve("cache.example", &t).is_err());
    }
}
