//! redis-rs (sync API) integration: connections and an r2d2 pool that stay authenticated
//!
//! Every [`EntraConnection`] sends `AUTH <oid> <token>` when it connects, and again whenever a
//! newer credential generation exists: before its next command, and from a background
//! re-authenticator thread for connections that sit idle (in a pool or not), so the server never
//! closes a connection because its token expired. A `WRONGPASS` or `NOAUTH` reply makes the
//! provider fetch a fresh token and the command is retried once after re-authenticating; it is
//! never swallowed.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::{Cmd, ConnectionLike, ErrorKind, RedisError, RedisResult, Value};
use redis_entraid_core::error::{ReauthError, ReauthErrorKind};
use redis_entraid_core::event::{Generation, Status};
use redis_entraid_core::token::Credentials;

use crate::Provider;

/// How long a connection waits for a fresh token after Redis rejected the current one
const FRESH_TOKEN_WAIT: Duration = Duration::from_secs(15);

/// How soon the re-authenticator tries again a connection that was busy
const BUSY_RETRY: Duration = Duration::from_millis(10);

struct Link {
    connection: redis::Connection,
    generation: Option<Generation>,
}

impl Link {
    fn auth(&mut self, generation: Generation, credentials: &Credentials) -> RedisResult<()> {
        let mut auth = Cmd::new();
        auth.arg("AUTH")
            .arg(credentials.username())
            .arg(credentials.password().expose_secret());
        // `query` turns an error reply (`-WRONGPASS`) into `Err`; `req_command` would not.
        auth.query::<()>(&mut self.connection)?;
        self.generation = Some(generation);
        Ok(())
    }
}

/// Re-authenticates idle connections when a new token arrives
struct Reauthenticator {
    provider: Provider,
    links: Mutex<Vec<Weak<Mutex<Link>>>>,
}

impl Reauthenticator {
    fn start(provider: Provider) -> Arc<Self> {
        let this = Arc::new(Self {
            provider,
            links: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&this);
        let spawned = std::thread::Builder::new()
            .name("redis-entraid-reauth".to_owned())
            .spawn(move || Self::run(weak));
        if let Err(e) = spawned {
            // Connections still re-authenticate before each command; only idle ones lose out.
            tracing::error!("could not start the idle re-authentication thread: {e}");
        }
        this
    }

    fn register(&self, link: &Arc<Mutex<Link>>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|l| l.strong_count() > 0);
        links.push(Arc::downgrade(link));
    }

    fn run(weak: Weak<Self>) {
        let mut seen: Option<Generation> = None;
        loop {
            // Hold the provider only while waiting, so dropping every client ends this thread
            // within one wait.
            let Some(provider) = weak.upgrade().map(|this| this.provider.clone()) else {
                return;
            };
            let newer = provider.wait_newer(seen, Duration::from_millis(500));
            drop(provider);
            let Some((generation, credentials)) = newer else {
                continue;
            };
            seen = Some(generation);
            let Some(this) = weak.upgrade() else { return };
            let mut pending: Vec<Weak<Mutex<Link>>> = {
                let links = this.links.lock().unwrap_or_else(|e| e.into_inner());
                links.clone()
            };
            drop(this);
            // A connection busy with a command when the token arrives is tried again shortly:
            // skipping it until the next token would let an idle-again pooled connection
            // outlive its token. A newer token ends this pass and starts the next.
            loop {
                let Some(this) = weak.upgrade() else { return };
                pending.retain(|link| {
                    let Some(link) = link.upgrade() else {
                        return false;
                    };
                    let Ok(mut link) = link.try_lock() else {
                        return true;
                    };
                    if link.generation.is_some_and(|g| g >= generation) {
                        return false;
                    }
                    if let Err(e) = link.auth(generation, &credentials) {
                        this.provider
                            .report_reauth(generation, Err(reauth_error(&e)));
                    }
                    false
                });
                let superseded = this.provider.current().is_some_and(|(g, _)| g > generation);
                if pending.is_empty() || superseded || this.provider.status() == Status::Stopped {
                    break;
                }
                drop(this);
                std::thread::sleep(BUSY_RETRY);
            }
        }
    }
}

fn is_auth_error(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::AuthenticationFailed)
        || e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH")
}

/// An error reply that says the connection's credentials were refused (redis-rs hands error
/// replies back as values; the caller's `query` turns them into errors later)
fn auth_error_reply(value: &Value) -> Option<RedisError> {
    match value {
        Value::ServerError(e) if matches!(e.code(), "WRONGPASS" | "NOAUTH") => {
            Some(e.clone().into())
        }
        _ => None,
    }
}

/// Something a command returned that may be a refusal of the credentials
trait Reply {
    fn auth_error(&self) -> Option<RedisError>;
}

impl Reply for Value {
    fn auth_error(&self) -> Option<RedisError> {
        auth_error_reply(self)
    }
}

impl Reply for Vec<Value> {
    fn auth_error(&self) -> Option<RedisError> {
        self.iter().find_map(auth_error_reply)
    }
}

fn reauth_error(e: &RedisError) -> ReauthError {
    let kind = match e.code() {
        Some("WRONGPASS") => ReauthErrorKind::WrongPass,
        Some("NOAUTH") => ReauthErrorKind::NoAuth,
        _ if e.kind() == ErrorKind::AuthenticationFailed => ReauthErrorKind::WrongPass,
        _ if e.is_io_error() || e.is_connection_dropped() => ReauthErrorKind::Connection,
        _ => ReauthErrorKind::Other,
    };
    ReauthError::new(kind, e.to_string())
}

fn no_credentials() -> RedisError {
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "no Entra ID token yet",
        "the provider has not obtained a token; check its status() and last_error()".to_owned(),
    ))
}

/// Opens connections that authenticate with a provider's tokens
///
/// Clones share one idle re-authenticator thread, which ends when the last client and
/// connection are gone.
#[derive(Clone)]
pub struct EntraClient {
    client: redis::Client,
    reauthenticator: Arc<Reauthenticator>,
}

impl fmt::Debug for EntraClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraClient")
            .field("server", &self.client.get_connection_info().addr())
            .finish_non_exhaustive()
    }
}

impl EntraClient {
    /// Wraps a redis-rs client (use `rediss://` for Azure; the URL must carry no password)
    pub fn new(client: redis::Client, provider: Provider) -> Self {
        Self {
            client,
            reauthenticator: Reauthenticator::start(provider),
        }
    }

    /// The provider
    pub fn provider(&self) -> &Provider {
        &self.reauthenticator.provider
    }

    /// Connects and authenticates
    ///
    /// # Errors
    /// The connection error, or an authentication error when the provider has no token yet or
    /// Redis rejects it.
    pub fn get_connection(&self) -> RedisResult<EntraConnection> {
        self.get_connection_with_timeout(Duration::from_secs(10))
    }

    /// Connects within `timeout` and authenticates
    ///
    /// # Errors
    /// As [`get_connection`](Self::get_connection).
    pub fn get_connection_with_timeout(&self, timeout: Duration) -> RedisResult<EntraConnection> {
        let connection = self.client.get_connection_with_timeout(timeout)?;
        let link = Arc::new(Mutex::new(Link {
            connection,
            generation: None,
        }));
        let mut entra = EntraConnection {
            link,
            provider: self.reauthenticator.provider.clone(),
            _reauthenticator: Arc::clone(&self.reauthenticator),
        };
        entra.ensure_fresh()?;
        self.reauthenticator.register(&entra.link);
        Ok(entra)
    }
}

/// A redis-rs connection that keeps itself authenticated; use it wherever a
/// [`ConnectionLike`] goes (`cmd.query(&mut conn)`, pipelines)
pub struct EntraConnection {
    link: Arc<Mutex<Link>>,
    provider: Provider,
    _reauthenticator: Arc<Reauthenticator>,
}

impl fmt::Debug for EntraConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraConnection")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl EntraConnection {
    fn lock(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The credential generation this connection last authenticated with
    pub fn generation(&self) -> Option<Generation> {
        self.lock().generation
    }

    /// Sends `AUTH` if the provider holds newer credentials than this connection
    ///
    /// # Errors
    /// When there is no token yet, or Redis rejects it (the provider is told, and fetches a
    /// fresh token).
    pub fn ensure_fresh(&mut self) -> RedisResult<()> {
        let (generation, credentials) = self.provider.current().ok_or_else(no_credentials)?;
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if link.generation.is_some_and(|g| g >= generation) {
            return Ok(());
        }
        link.auth(generation, &credentials).inspect_err(|e| {
            self.provider
                .report_reauth(generation, Err(reauth_error(e)));
        })
    }

    /// After Redis rejected generation `rejected`: make sure the provider knows (it fetches a
    /// fresh token), wait briefly for a newer one, and AUTH again
    fn recover(&mut self, rejected: Option<Generation>, error: &RedisError) -> RedisResult<()> {
        match rejected {
            Some(generation) => self
                .provider
                .report_reauth(generation, Err(reauth_error(error))),
            None => self.provider.refresh_now(),
        }
        let (generation, credentials) = self
            .provider
            .wait_newer(rejected, FRESH_TOKEN_WAIT)
            .or_else(|| self.provider.current())
            .ok_or_else(no_credentials)?;
        self.lock().auth(generation, &credentials)
    }

    fn with_retry<T: Reply>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let latest = self.provider.current().map(|(g, _)| g);
        let first = self
            .ensure_fresh()
            .and_then(|()| f(&mut self.lock().connection))
            .and_then(|reply| match reply.auth_error() {
                Some(e) => Err(e),
                None => Ok(reply),
            });
        match first {
            Err(e) if is_auth_error(&e) => {
                // Either the AUTH with the latest token failed, or the command met NOAUTH /
                // WRONGPASS with the token the connection holds: the newer of the two was
                // rejected.
                let rejected = latest.max(self.generation());
                tracing::warn!(
                    "Redis rejected the connection's credentials ({e}); re-authenticating once"
                );
                self.recover(rejected, &e)?;
                f(&mut self.lock().connection)
            }
            other => other,
        }
    }
}

impl ConnectionLike for EntraConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.with_retry(|c| c.req_packed_command(cmd))
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.with_retry(|c| c.req_packed_commands(cmd, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.lock().connection.get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.ensure_fresh().is_ok() && self.lock().connection.check_connection()
    }

    fn is_open(&self) -> bool {
        self.lock().connection.is_open()
    }
}

/// An r2d2 connection manager for [`EntraConnection`]s
///
/// Pooled connections are re-authenticated on checkout when a newer token exists, and by the
/// client's background thread while they sit idle, so the server never drops an idle pooled
/// connection for an expired token.
///
/// ```no_run
/// # fn demo(provider: redis_entraid_blocking::Provider) -> Result<(), Box<dyn std::error::Error>> {
/// use redis_entraid_blocking::redis_sync::{EntraClient, EntraConnectionManager};
/// let client = EntraClient::new(redis::Client::open("rediss://my-cache.redis.azure.net:10000")?, provider);
/// let pool = r2d2::Pool::builder().max_size(16).build(EntraConnectionManager::new(client))?;
/// let mut conn = pool.get()?;
/// let _: () = redis::cmd("SET").arg("key").arg("value").query(&mut *conn)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EntraConnectionManager {
    client: EntraClient,
}

impl EntraConnectionManager {
    /// A manager opening connections through `client`
    pub fn new(client: EntraClient) -> Self {
        Self { client }
    }
}

impl r2d2::ManageConnection for EntraConnectionManager {
    type Connection = EntraConnection;
    type Error = RedisError;

    fn connect(&self) -> Result<EntraConnection, RedisError> {
        self.client.get_connection()
    }

    fn is_valid(&self, conn: &mut EntraConnection) -> Result<(), RedisError> {
        conn.ensure_fresh()?;
        redis::cmd("PING").query::<()>(conn)
    }

    fn has_broken(&self, conn: &mut EntraConnection) -> bool {
        !conn.is_open()
    }
}
