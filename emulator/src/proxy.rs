//! The Azure-Managed-Redis-like proxy in front of a real `redis-server`.
//!
//! One task per client connection owns the client socket and one backend connection. Commands
//! are framed with `redis-protocol`; forwarded commands and the backend's replies are relayed
//! verbatim. A command the proxy may have to answer itself (`AUTH`, `HELLO`, `QUIT`, anything
//! before authentication) waits until every earlier forwarded command has been answered, so
//! replies always keep the order of the commands.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;
use rsa::RsaPublicKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::counters::{bump, CounterCells};
use crate::issuer::verify_redis_token;
use crate::Error;

const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
/// Largest unparsed client input kept per connection.
const MAX_CLIENT_BUFFER: usize = 64 << 20;
/// Redis's `proto-max-bulk-len` default.
const MAX_BULK_LEN: usize = 512 << 20;
const MAX_MULTIBULK_LEN: usize = 1 << 20;

/// A `redis-server` child process on a loopback port, killed on drop.
#[derive(Debug)]
pub(crate) struct RedisServer {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_in_path(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

pub(crate) fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts `redis-server` without persistence on a free loopback port and waits until it answers.
pub(crate) async fn start_redis_server(bin: &Path) -> Result<RedisServer, Error> {
    start_redis_server_with(bin, |_| Vec::new()).await
}

/// Like [`start_redis_server`], with extra arguments chosen once the port is known.
pub(crate) async fn start_redis_server_with(
    bin: &Path,
    extra: impl Fn(u16) -> Vec<String>,
) -> Result<RedisServer, Error> {
    let Some(path) = find_in_path(bin) else {
        return Err(Error::RedisServerMissing(bin.display().to_string()));
    };
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port()?;
        let mut child = Command::new(&path)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .args(extra(port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                last = format!("redis-server exited with {status}");
                break;
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(RedisServer { child, addr });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        if last.is_empty() {
            last = "redis-server did not start listening within 10 s".into();
        }
    }
    Err(Error::RedisServerStart(last))
}

/// What every proxy connection needs.
pub(crate) struct ProxyState {
    pub(crate) key: RsaPublicKey,
    pub(crate) backend: SocketAddr,
    pub(crate) counters: Arc<CounterCells>,
    /// `AUTH`s still to refuse with `WRONGPASS` however valid their token (shared by every
    /// proxy of one emulator: [`crate::Emulator::refuse_next_auths`])
    pub(crate) refuse_auths: Arc<std::sync::atomic::AtomicU64>,
    /// Tokens whose signature and claims were verified, with their `exp` (the last few):
    /// a rotation presents one token on every connection, and verifying it a thousand times
    /// in the test process would measure the emulator instead of the client
    pub(crate) verified: std::sync::Mutex<std::collections::VecDeque<(String, String, u64)>>,
}

/// How many verified tokens each proxy remembers
const VERIFIED_KEPT: usize = 8;

impl ProxyState {
    pub(crate) fn new(
        key: RsaPublicKey,
        backend: SocketAddr,
        counters: Arc<CounterCells>,
        refuse_auths: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self {
            key,
            backend,
            counters,
            refuse_auths,
            verified: std::sync::Mutex::default(),
        }
    }

    /// `verify_redis_token`, remembering successes; expiry is checked on every call
    fn verify(&self, user: &str, token: &str) -> Result<u64, String> {
        let lock = || {
            self.verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let known = lock()
            .iter()
            .find(|(u, t, _)| u == user && t == token)
            .map(|(_, _, exp)| *exp);
        if let Some(exp) = known {
            return if exp <= crate::jwt::now_secs() {
                Err("Expired".into())
            } else {
                Ok(exp)
            };
        }
        let exp = verify_redis_token(&self.key, user, token).map_err(|r| format!("{r:?}"))?;
        let mut verified = lock();
        if verified.len() == VERIFIED_KEPT {
            verified.pop_front();
        }
        verified.push_back((user.to_owned(), token.to_owned(), exp));
        Ok(exp)
    }
}

/// Accepts client connections forever.
pub(crate) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<ProxyState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        bump(&state.counters.redis_connections_accepted);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => connection(s, &state).await,
                    Err(e) => tracing::debug!(error = %e, "proxy TLS handshake failed"),
                },
                None => connection(stream, &state).await,
            }
        });
    }
}

/// Where the deadline of a token lies on tokio's clock.
fn deadline_of(exp: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(exp).saturating_sub(now);
    let base = Instant::now();
    base.checked_add(left)
        .unwrap_or_else(|| base + Duration::from_secs(100 * 365 * 86_400))
}

async fn connection<S>(client: S, state: &ProxyState)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let backend = match TcpStream::connect(state.backend).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "backend redis-server unreachable");
            let _ = cw.write_all(b"-ERR emulator backend unavailable\r\n").await;
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    let (mut br, mut bw) = backend.into_split();
    let mut conn = Conn::new(state);
    let mut cbuf = BytesMut::with_capacity(4096);
    let mut bbuf = BytesMut::with_capacity(4096);
    let mut to_client = BytesMut::new();
    let mut to_backend = BytesMut::new();
    loop {
        let flow = conn.process_client(&mut cbuf, &mut to_client, &mut to_backend);
        if !to_backend.is_empty() && bw.write_all(&to_backend.split()).await.is_err() {
            break;
        }
        if !to_client.is_empty() && cw.write_all(&to_client.split()).await.is_err() {
            break;
        }
        if flow == Flow::Close {
            break;
        }
        let deadline = conn.deadline;
        tokio::select! {
            r = cr.read_buf(&mut cbuf), if conn.stalled.is_none() => {
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
            }
            r = br.read_buf(&mut bbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
                let flow = conn.process_backend(&mut bbuf, &mut to_client);
                if !to_client.is_empty() && cw.write_all(&to_client.split()).await.is_err() {
                    break;
                }
                if flow == Flow::Close {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                bump(&state.counters.redis_closed_for_expiry);
                tracing::info!("closing Redis connection: its token expired without a newer AUTH");
                break;
            }
        }
    }
    let _ = cw.shutdown().await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Channel,
    Pattern,
    Shard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Regular,
    /// `HELLO`: the protocol before it, restored if it fails.
    Hello(u8),
    Reset,
    /// A (un)subscribe command: confirmations still expected (`None`: decided when the first
    /// arrives, for an argument-less unsubscribe).
    PubSub(Option<usize>, Family),
}

#[derive(Clone, Copy, Debug)]
struct Expected {
    kind: Kind,
    proto: u8,
}

struct Conn<'a> {
    state: &'a ProxyState,
    authed: bool,
    deadline: Option<Instant>,
    proto: u8,
    pending: VecDeque<Expected>,
    stalled: Option<(Vec<Bytes>, Bytes)>,
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shards: HashSet<Bytes>,
}

enum Scan {
    Incomplete,
    Complete,
    Invalid(&'static str),
}

/// Reads a `<digits>\r\n` length line at `start`.
fn read_len(buf: &[u8], start: usize) -> Option<Result<(usize, usize), ()>> {
    let rest = buf.get(start..)?;
    let Some(end) = rest.iter().take(24).position(|b| *b == b'\r') else {
        return if rest.len() >= 24 {
            Some(Err(()))
        } else {
            None
        };
    };
    if rest.len() < end + 2 {
        return None;
    }
    if rest[end + 1] != b'\n' {
        return Some(Err(()));
    }
    let digits = std::str::from_utf8(&rest[..end]).ok();
    match digits.and_then(|d| d.parse::<usize>().ok()) {
        Some(n) => Some(Ok((n, start + end + 2))),
        None => Some(Err(())),
    }
}

/// Checks that the buffer starts with a flat array of bulk strings (the only shape of a Redis
/// command) within Redis's size limits, before the buffer is handed to the RESP decoder. This
/// keeps nested or oversized input from reaching the decoder at all.
fn scan_command(buf: &[u8]) -> Scan {
    match buf.first() {
        None => return Scan::Incomplete,
        Some(b'*') => {}
        Some(_) => {
            return Scan::Invalid("expected '*' (the emulator does not accept inline commands)")
        }
    }
    let (n, mut pos) = match read_len(buf, 1) {
        None => return Scan::Incomplete,
        Some(Err(())) => return Scan::Invalid("invalid multibulk length"),
        Some(Ok(v)) => v,
    };
    if n > MAX_MULTIBULK_LEN {
        return Scan::Invalid("invalid multibulk length");
    }
    for _ in 0..n {
        match buf.get(pos) {
            None => return Scan::Incomplete,
            Some(b'$') => {}
            Some(_) => return Scan::Invalid("expected '$'"),
        }
        let (len, start) = match read_len(buf, pos + 1) {
            None => return Scan::Incomplete,
            Some(Err(())) => return Scan::Invalid("invalid bulk length"),
            Some(Ok(v)) => v,
        };
        if len > MAX_BULK_LEN {
            return Scan::Invalid("invalid bulk length");
        }
        pos = start + len + 2;
        if pos > buf.len() {
            return Scan::Incomplete;
        }
    }
    Scan::Complete
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn encode_command(args: &[Bytes]) -> Result<Bytes, Error> {
    let frame = Frame2::Array(args.iter().cloned().map(Frame2::BulkString).collect());
    let mut buf = BytesMut::new();
    redis_protocol::resp2::encode::extend_encode(&mut buf, &frame, false)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(buf.freeze())
}

/// A backend frame, reduced to what the proxy needs to know.
struct Seen {
    push: bool,
    error: bool,
    /// `(kind, channel, count)` when the frame is an array/push whose first element is a string.
    head: Option<(String, Option<Bytes>, Option<i64>)>,
}

fn seen2(f: &Frame2) -> Seen {
    let head = match f {
        Frame2::Array(items) => match items.first() {
            Some(Frame2::BulkString(k) | Frame2::SimpleString(k)) => Some((
                String::from_utf8_lossy(k).to_ascii_lowercase(),
                match items.get(1) {
                    Some(Frame2::BulkString(c)) => Some(c.clone()),
                    _ => None,
                },
                match items.get(2) {
                    Some(Frame2::Integer(n)) => Some(*n),
                    _ => None,
                },
            )),
            _ => None,
        },
        _ => None,
    };
    Seen {
        push: false,
        error: matches!(f, Frame2::Error(_)),
        head,
    }
}

fn seen3(f: &Frame3) -> Seen {
    let (push, items) = match f {
        Frame3::Push { data, .. } => (true, Some(data)),
        Frame3::Array { data, .. } => (false, Some(data)),
        _ => (false, None),
    };
    let head = items.and_then(|items| match items.first() {
        Some(Frame3::BlobString { data: k, .. } | Frame3::SimpleString { data: k, .. }) => Some((
            String::from_utf8_lossy(k).to_ascii_lowercase(),
            match items.get(1) {
                Some(Frame3::BlobString { data, .. }) => Some(data.clone()),
                _ => None,
            },
            match items.get(2) {
                Some(Frame3::Number { data, .. }) => Some(*data),
                _ => None,
            },
        )),
        _ => None,
    });
    Seen {
        push,
        error: matches!(f, Frame3::SimpleError { .. } | Frame3::BlobError { .. }),
        head,
    }
}

fn confirmation(kind: &str) -> Option<(Family, bool)> {
    Some(match kind {
        "subscribe" => (Family::Channel, true),
        "unsubscribe" => (Family::Channel, false),
        "psubscribe" => (Family::Pattern, true),
        "punsubscribe" => (Family::Pattern, false),
        "ssubscribe" => (Family::Shard, true),
        "sunsubscribe" => (Family::Shard, false),
        _ => return None,
    })
}

impl<'a> Conn<'a> {
    fn new(state: &'a ProxyState) -> Self {
        Self {
            state,
            authed: false,
            deadline: None,
            proto: 2,
            pending: VecDeque::new(),
            stalled: None,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            shards: HashSet::new(),
        }
    }

    fn subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty())
    }

    fn set_of(&mut self, family: Family) -> &mut HashSet<Bytes> {
        match family {
            Family::Channel => &mut self.channels,
            Family::Pattern => &mut self.patterns,
            Family::Shard => &mut self.shards,
        }
    }

    /// Handles every complete command in `cbuf`.
    fn process_client(
        &mut self,
        cbuf: &mut BytesMut,
        to_client: &mut BytesMut,
        to_backend: &mut BytesMut,
    ) -> Flow {
        loop {
            if let Some((args, raw)) = self.stalled.take() {
                if !self.pending.is_empty() {
                    self.stalled = Some((args, raw));
                    return Flow::Continue;
                }
                if self.execute(args, raw, to_client, to_backend) == Flow::Close {
                    return Flow::Close;
                }
                continue;
            }
            match scan_command(cbuf) {
                Scan::Incomplete => {
                    if cbuf.len() >= MAX_CLIENT_BUFFER {
                        to_client.extend_from_slice(b"-ERR Protocol error: command too large\r\n");
                        return Flow::Close;
                    }
                    return Flow::Continue;
                }
                Scan::Invalid(why) => {
                    tracing::debug!(why, "closing Redis connection on a protocol error");
                    to_client
                        .extend_from_slice(format!("-ERR Protocol error: {why}\r\n").as_bytes());
                    return Flow::Close;
                }
                Scan::Complete => {}
            }
            let (frame, raw) = match redis_protocol::resp2::decode::decode_bytes_mut(cbuf) {
                Ok(Some((frame, _, raw))) => (frame, raw),
                Ok(None) | Err(_) => {
                    to_client.extend_from_slice(b"-ERR Protocol error: unparsable command\r\n");
                    return Flow::Close;
                }
            };
            let Frame2::Array(items) = frame else {
                return Flow::Close;
            };
            let args: Vec<Bytes> = items
                .into_iter()
                .filter_map(|f| match f {
                    Frame2::BulkString(b) => Some(b),
                    _ => None,
                })
                .collect();
            let Some(name) = args.first().map(|a| upper(a)) else {
                continue;
            };
            let local = !self.authed || matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT");
            if local && !self.pending.is_empty() {
                self.stalled = Some((args, raw));
                return Flow::Continue;
            }
            if self.execute(args, raw, to_client, to_backend) == Flow::Close {
                return Flow::Close;
            }
        }
    }

    fn reject(&self, to_client: &mut BytesMut, reply: &[u8]) {
        bump(&self.state.counters.redis_commands_rejected);
        to_client.extend_from_slice(reply);
    }

    /// Checks `AUTH` credentials; on success the connection is authenticated until the token's
    /// `exp`.
    fn authenticate(&mut self, user: &[u8], token: &[u8]) -> bool {
        let c = &self.state.counters;
        let refuse = self
            .state
            .refuse_auths
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if refuse {
            bump(&c.redis_auth_failed);
            tracing::debug!("Redis AUTH refused on request (refuse_next_auths)");
            return false;
        }
        let result = match (std::str::from_utf8(user), std::str::from_utf8(token)) {
            (Ok(u), Ok(t)) => self.state.verify(u, t),
            _ => Err("not UTF-8".into()),
        };
        match result {
            Ok(exp) => {
                bump(&c.redis_auth_ok);
                self.authed = true;
                self.deadline = Some(deadline_of(exp));
                true
            }
            Err(reason) => {
                bump(&c.redis_auth_failed);
                tracing::debug!(reason, "Redis AUTH refused");
                false
            }
        }
    }

    fn forward(&mut self, raw: &[u8], kind: Kind, to_backend: &mut BytesMut) {
        bump(&self.state.counters.redis_commands_forwarded);
        to_backend.extend_from_slice(raw);
        self.pending.push_back(Expected {
            kind,
            proto: self.proto,
        });
    }

    /// Runs one command; local commands only run when nothing is pending.
    fn execute(
        &mut self,
        args: Vec<Bytes>,
        raw: Bytes,
        to_client: &mut BytesMut,
        to_backend: &mut BytesMut,
    ) -> Flow {
        let name = args.first().map(|a| upper(a)).unwrap_or_default();
        let refused_in_subscribed_context = |cmd: &str| {
            format!("-ERR Can't execute '{cmd}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n")
        };
        match name.as_str() {
            "QUIT" => {
                to_client.extend_from_slice(b"+OK\r\n");
                Flow::Close
            }
            "AUTH" => {
                if self.proto == 2 && self.subscribed() {
                    self.reject(to_client, refused_in_subscribed_context("auth").as_bytes());
                } else if args.len() == 3 {
                    if self.authenticate(&args[1], &args[2]) {
                        to_client.extend_from_slice(b"+OK\r\n");
                    } else {
                        to_client.extend_from_slice(WRONGPASS);
                    }
                } else if args.len() == 2 {
                    bump(&self.state.counters.redis_auth_failed);
                    to_client.extend_from_slice(WRONGPASS);
                } else {
                    self.reject(
                        to_client,
                        b"-ERR wrong number of arguments for 'auth' command\r\n",
                    );
                }
                Flow::Continue
            }
            "HELLO" => {
                self.hello(args, raw, to_client, to_backend);
                Flow::Continue
            }
            _ if !self.authed => {
                self.reject(to_client, NOAUTH);
                Flow::Continue
            }
            _ => {
                let n = args.len() - 1;
                let kind = match name.as_str() {
                    "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" if n == 0 => Kind::Regular,
                    "SUBSCRIBE" => Kind::PubSub(Some(n), Family::Channel),
                    "PSUBSCRIBE" => Kind::PubSub(Some(n), Family::Pattern),
                    "SSUBSCRIBE" => Kind::PubSub(Some(n), Family::Shard),
                    "UNSUBSCRIBE" => Kind::PubSub((n > 0).then_some(n), Family::Channel),
                    "PUNSUBSCRIBE" => Kind::PubSub((n > 0).then_some(n), Family::Pattern),
                    "SUNSUBSCRIBE" => Kind::PubSub((n > 0).then_some(n), Family::Shard),
                    "RESET" => Kind::Reset,
                    _ => Kind::Regular,
                };
                self.forward(&raw, kind, to_backend);
                if kind == Kind::Reset {
                    self.proto = 2;
                }
                Flow::Continue
            }
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: `AUTH` is consumed here, the rest is
    /// forwarded.
    fn hello(
        &mut self,
        args: Vec<Bytes>,
        raw: Bytes,
        to_client: &mut BytesMut,
        to_backend: &mut BytesMut,
    ) {
        let mut auth = None;
        let mut rest = Vec::with_capacity(args.len());
        rest.extend(args.iter().take(2).cloned());
        let mut i = 2;
        while i < args.len() {
            match upper(&args[i]).as_str() {
                "AUTH" if i + 2 < args.len() => {
                    auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                    i += 3;
                }
                "SETNAME" if i + 1 < args.len() => {
                    rest.extend_from_slice(&args[i..i + 2]);
                    i += 2;
                }
                other => {
                    let msg = format!(
                        "-ERR Syntax error in HELLO option '{}'\r\n",
                        other.to_ascii_lowercase()
                    );
                    self.reject(to_client, msg.as_bytes());
                    return;
                }
            }
        }
        if self.proto == 2 && self.subscribed() {
            self.reject(to_client, b"-ERR Can't execute 'hello': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n");
            return;
        }
        let forwarded = match auth {
            Some((user, token)) => {
                if !self.authenticate(&user, &token) {
                    to_client.extend_from_slice(WRONGPASS);
                    return;
                }
                match encode_command(&rest) {
                    Ok(b) => b,
                    Err(_) => {
                        self.reject(to_client, b"-ERR internal error\r\n");
                        return;
                    }
                }
            }
            None if !self.authed => {
                self.reject(to_client, HELLO_NOAUTH);
                return;
            }
            None => raw,
        };
        let before = self.proto;
        self.forward(&forwarded, Kind::Hello(before), to_backend);
        match args.get(1).map(|v| v.as_ref()) {
            Some(b"2") => self.proto = 2,
            Some(b"3") => self.proto = 3,
            _ => {}
        }
        // The reply to HELLO is already in the new protocol.
        if let Some(last) = self.pending.back_mut() {
            last.proto = self.proto;
        }
    }

    /// Relays every complete backend frame and keeps the bookkeeping of pending replies.
    fn process_backend(&mut self, bbuf: &mut BytesMut, to_client: &mut BytesMut) -> Flow {
        loop {
            let proto = self.pending.front().map_or(self.proto, |e| e.proto);
            let decoded = if proto == 3 {
                redis_protocol::resp3::decode::complete::decode_bytes_mut(bbuf)
                    .map(|o| o.map(|(f, _, raw)| (seen3(&f), raw)))
            } else {
                redis_protocol::resp2::decode::decode_bytes_mut(bbuf)
                    .map(|o| o.map(|(f, _, raw)| (seen2(&f), raw)))
            };
            let (seen, raw) = match decoded {
                Ok(Some(v)) => v,
                Ok(None) => return Flow::Continue,
                Err(e) => {
                    tracing::warn!(error = %e, "unparsable reply from redis-server");
                    return Flow::Close;
                }
            };
            to_client.extend_from_slice(&raw);
            self.account(&seen);
        }
    }

    fn account(&mut self, seen: &Seen) {
        let confirm = seen
            .head
            .as_ref()
            .and_then(|(kind, ch, count)| confirmation(kind).map(|c| (c, ch.clone(), *count)));
        let front_is_pubsub = matches!(
            self.pending.front(),
            Some(Expected {
                kind: Kind::PubSub(..),
                ..
            })
        );
        if let Some(((family, add), channel, count)) = confirm {
            if seen.push || front_is_pubsub {
                if let Some(Expected {
                    kind: Kind::PubSub(remaining, fam),
                    ..
                }) = self.pending.front_mut()
                {
                    let fam = *fam;
                    let left = match remaining {
                        Some(n) => *n,
                        None => match fam {
                            Family::Channel => self.channels.len().max(1),
                            Family::Pattern => self.patterns.len().max(1),
                            Family::Shard => self.shards.len().max(1),
                        },
                    };
                    if left <= 1 {
                        self.pending.pop_front();
                    } else if let Some(Expected {
                        kind: Kind::PubSub(r, _),
                        ..
                    }) = self.pending.front_mut()
                    {
                        *r = Some(left - 1);
                    }
                }
                if let Some(ch) = channel {
                    let set = self.set_of(family);
                    if add {
                        set.insert(ch);
                    } else {
                        set.remove(&ch);
                    }
                }
                if count == Some(0) && family != Family::Shard {
                    self.channels.clear();
                    self.patterns.clear();
                }
                return;
            }
        }
        if seen.push {
            return;
        }
        let is_message = seen
            .head
            .as_ref()
            .is_some_and(|(k, _, _)| matches!(k.as_str(), "message" | "pmessage" | "smessage"));
        if self.proto == 2 && self.subscribed() && is_message {
            return;
        }
        match self.pending.pop_front() {
            Some(Expected {
                kind: Kind::Hello(before),
                ..
            }) if seen.error => {
                self.proto = before;
                for e in self.pending.iter_mut() {
                    if matches!(e.kind, Kind::Hello(_) | Kind::Reset) {
                        break;
                    }
                    e.proto = before;
                }
            }
            Some(Expected {
                kind: Kind::Reset, ..
            }) => {
                self.channels.clear();
                self.patterns.clear();
                self.shards.clear();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_scanner_accepts_flat_commands_and_refuses_the_rest() {
        assert!(matches!(
            scan_command(b"*1\r\n$4\r\nPING\r\n"),
            Scan::Complete
        ));
        assert!(matches!(
            scan_command(b"*2\r\n$3\r\nGET\r\n$1\r\n"),
            Scan::Incomplete
        ));
        assert!(matches!(
            scan_command(b"*1\r\n*1\r\n*1\r\n"),
            Scan::Invalid(_)
        ));
        assert!(matches!(scan_command(b"PING\r\n"), Scan::Invalid(_)));
        assert!(matches!(
            scan_command(b"*1\r\n$99999999999\r\n"),
            Scan::Invalid(_)
        ));
        assert!(matches!(scan_command(b"*99999999\r\n"), Scan::Invalid(_)));
        assert!(matches!(scan_command(b"*1\r\n$-1\r\n"), Scan::Invalid(_)));
        assert!(matches!(
            scan_command(b"*123456789012345678901234567890"),
            Scan::Invalid(_)
        ));
        assert!(matches!(scan_command(b"*0\r\n"), Scan::Complete));
    }
}
