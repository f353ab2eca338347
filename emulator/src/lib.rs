//! A local look-alike of the Azure side of Microsoft Entra ID authentication for Redis.
//!
//! It serves the managed-identity endpoints (IMDS and App Service), the Entra v2 token endpoint
//! (client secret, client certificate assertion and workload-identity federated assertion), over
//! HTTP and HTTPS (its own CA), issues real RS256 access tokens with a short configurable lifetime,
//! injects faults on demand, and runs an Azure-Managed-Redis-like proxy in front of a real
//! `redis-server` that enforces `AUTH <oid> <token>` and closes connections whose token expired.
//!
//! ```no_run
//! # async fn demo() -> Result<(), redis_entraid_emulator::Error> {
//! use std::time::Duration;
//! use redis_entraid_emulator::{Emulator, Fault};
//!
//! let emu = Emulator::builder().token_lifetime(Duration::from_secs(6)).start().await?;
//! for (k, v) in emu.env() {
//!     println!("{k}={v}");
//! }
//! emu.faults().inject(Fault::status(503).times(2));
//! println!("{:?}", emu.counters());
//! # Ok(()) }
//! ```
//!
//! Blocking tests use [`Emulator::start_blocking`], which runs the emulator on its own runtime.

mod certs;
mod cluster;
mod counters;
mod faults;
mod hostile;
mod http;
mod identity;
mod issuer;
mod jwt;
mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use certs::ClientCertificate;
pub use counters::Counters;
pub use faults::{Endpoint, Fault, FaultKind, Faults};
pub use hostile::{HostileServer, Hostility};
pub use identity::{Identities, ManagedIdentity, Secret, ServicePrincipal};
pub use issuer::{TokenSpec, REDIS_AUDIENCE, TOKEN_EXCHANGE_AUDIENCE};
pub use jwt::Alg;

use counters::CounterCells;
use http::{HttpState, RegisteredCert};
use issuer::Issuer;
use jwt::{now_secs, JwtSigner};

/// Errors of the emulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `redis-server` was not found.
    #[error("`{0}` was not found on PATH: the emulator's Redis proxy needs a real redis-server. Install it with `apt-get install redis-server` (Debian/Ubuntu; `brew install redis` on macOS), or point EmulatorBuilder::redis_server_path / REDIS_SERVER_BIN at it, or disable the proxy with EmulatorBuilder::without_redis")]
    RedisServerMissing(String),
    /// `redis-server` did not start.
    #[error("redis-server did not start: {0}")]
    RedisServerStart(String),
    /// Socket or file error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Certificate or TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Key generation or signing failed.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// Invalid builder input.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// RESP encoding failed.
    #[error("RESP error: {0}")]
    Protocol(String),
}

/// Configures and starts an [`Emulator`]. Every port defaults to a free loopback port.
#[derive(Debug, Clone)]
pub struct EmulatorBuilder {
    token_lifetime: Duration,
    federated_token_lifetime: Duration,
    tenant_id: String,
    system_assigned: Option<ManagedIdentity>,
    user_assigned: Vec<ManagedIdentity>,
    service_principal: ServicePrincipal,
    certificates: Vec<Vec<u8>>,
    http_port: u16,
    https_port: u16,
    redis_port: u16,
    redis_tls_port: u16,
    redis: bool,
    redis_server: PathBuf,
    work_dir: Option<PathBuf>,
    fresh_signing_key: bool,
    cluster: usize,
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(3600),
            federated_token_lifetime: Duration::from_secs(3600),
            tenant_id: identity::guid(),
            system_assigned: Some(ManagedIdentity::system_assigned()),
            user_assigned: vec![ManagedIdentity::user_assigned("emulator-uami")],
            service_principal: ServicePrincipal::random(),
            certificates: Vec::new(),
            http_port: 0,
            https_port: 0,
            redis_port: 0,
            redis_tls_port: 0,
            redis: true,
            redis_server: std::env::var_os("REDIS_SERVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("redis-server")),
            work_dir: None,
            fresh_signing_key: false,
            cluster: 0,
        }
    }
}

impl EmulatorBuilder {
    /// Also starts a Redis cluster of `primaries` nodes (0, the default, for none; at most
    /// 16), each behind its own enforcing proxy on loopback. The nodes announce their proxies'
    /// addresses, so `CLUSTER SLOTS` / `CLUSTER SHARDS` / `CLUSTER NODES` and `MOVED` / `ASK`
    /// redirections only ever name proxies. See [`Emulator::cluster_addrs`].
    pub fn cluster(mut self, primaries: usize) -> Self {
        self.cluster = primaries;
        self
    }

    /// Lifetime of every access token issued (default 1 h; rounded up to whole seconds, ≥ 1 s).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Lifetime of the federated (Kubernetes service-account) token written to
    /// `AZURE_FEDERATED_TOKEN_FILE` (default 1 h).
    pub fn federated_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.federated_token_lifetime = lifetime;
        self
    }

    /// The tenant ID (default: random).
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = tenant.into();
        self
    }

    /// Replaces the system-assigned identity; `None` disables it (IMDS then answers 400 to a
    /// request without selector, as on a VM without one).
    pub fn system_assigned(mut self, identity: Option<ManagedIdentity>) -> Self {
        self.system_assigned = identity;
        self
    }

    /// Adds a user-assigned identity (one, `emulator-uami`, exists by default).
    pub fn user_assigned(mut self, identity: ManagedIdentity) -> Self {
        self.user_assigned.push(identity);
        self
    }

    /// Replaces the service principal of the Entra token endpoint.
    pub fn service_principal(mut self, sp: ServicePrincipal) -> Self {
        self.service_principal = sp;
        self
    }

    /// Registers a certificate (PEM or DER, RSA key) for the service principal's
    /// certificate credential.
    pub fn client_certificate(mut self, pem_or_der: impl AsRef<[u8]>) -> Self {
        self.certificates.push(pem_or_der.as_ref().to_vec());
        self
    }

    /// Port of the plain HTTP endpoints (0: any free port).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self
    }

    /// Port of the HTTPS endpoints (0: any free port).
    pub fn https_port(mut self, port: u16) -> Self {
        self.https_port = port;
        self
    }

    /// Port of the plain Redis proxy (0: any free port).
    pub fn redis_port(mut self, port: u16) -> Self {
        self.redis_port = port;
        self
    }

    /// Port of the TLS Redis proxy (0: any free port).
    pub fn redis_tls_port(mut self, port: u16) -> Self {
        self.redis_tls_port = port;
        self
    }

    /// Path or name of the `redis-server` binary (default `redis-server`, or `REDIS_SERVER_BIN`).
    pub fn redis_server_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis_server = path.into();
        self
    }

    /// Starts only the identity endpoints, without `redis-server` and proxy.
    pub fn without_redis(mut self) -> Self {
        self.redis = false;
        self
    }

    /// Directory for the CA file and the federated token (default: a fresh temporary directory,
    /// removed on drop).
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Signs with a key of its own instead of the key shared by every emulator of the process
    /// (RSA key generation takes a moment; with the shared key, one emulator's tokens are
    /// accepted by another's proxy in the same process).
    pub fn fresh_signing_key(mut self) -> Self {
        self.fresh_signing_key = true;
        self
    }

    /// Starts the emulator on the current tokio runtime.
    pub async fn start(self) -> Result<Emulator, Error> {
        Emulator::start_with(self).await
    }
}

/// A running emulator. Dropping it stops every server and kills `redis-server`.
pub struct Emulator {
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    redis_addr: Option<SocketAddr>,
    redis_tls_addr: Option<SocketAddr>,
    identity_header: String,
    ca_pem: String,
    server_thumbprint_sha1: String,
    ca_path: PathBuf,
    federated_token_path: PathBuf,
    federated_issuer: String,
    federated_lifetime: Duration,
    work_dir: PathBuf,
    remove_work_dir: bool,
    http: Arc<HttpState>,
    counters: Arc<CounterCells>,
    refuse_auths: Arc<std::sync::atomic::AtomicU64>,
    faults: Faults,
    tasks: Vec<JoinHandle<()>>,
    _redis: Option<proxy::RedisServer>,
    cluster_addrs: Vec<SocketAddr>,
    _cluster: Vec<cluster::Node>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("http", &self.http_addr)
            .field("https", &self.https_addr)
            .field("redis", &self.redis_addr)
            .field("tenant_id", &self.http.identities.tenant_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if self.remove_work_dir {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }
}

async fn bind(port: u16) -> Result<TcpListener, Error> {
    Ok(TcpListener::bind(("127.0.0.1", port)).await?)
}

impl Emulator {
    /// A builder with defaults: 1 h tokens, a system-assigned and one user-assigned identity, a
    /// service principal with a secret, random IDs and ports.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// Starts the emulator on a runtime of its own (two worker threads), for blocking tests.
    /// Inside an async runtime use [`EmulatorBuilder::start`] instead (this returns an error).
    pub fn start_blocking(builder: EmulatorBuilder) -> Result<BlockingEmulator, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Config(
                "start_blocking called inside a tokio runtime; use EmulatorBuilder::start().await"
                    .into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("redis-entraid-emulator")
            .enable_all()
            .build()?;
        let emulator = runtime.block_on(builder.start())?;
        Ok(BlockingEmulator {
            emulator: Some(emulator),
            runtime: Some(runtime),
        })
    }

    async fn start_with(mut b: EmulatorBuilder) -> Result<Self, Error> {
        let (work_dir, remove_work_dir) = match b.work_dir.take() {
            Some(d) => (d, false),
            None => (
                std::env::temp_dir().join(format!(
                    "redis-entraid-emulator-{}-{}",
                    std::process::id(),
                    identity::guid()
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&work_dir)?;
        let started = Self::start_in(b, work_dir.clone(), remove_work_dir).await;
        if started.is_err() && remove_work_dir {
            let _ = std::fs::remove_dir_all(&work_dir);
        }
        started
    }

    async fn start_in(
        b: EmulatorBuilder,
        work_dir: PathBuf,
        remove_work_dir: bool,
    ) -> Result<Self, Error> {
        let signer = JwtSigner::new(if b.fresh_signing_key {
            jwt::generate_rsa_key()?
        } else {
            jwt::shared_rsa_key()?
        });
        let tls = certs::server_tls()?;
        let acceptor = TlsAcceptor::from(tls.config.clone());
        let ca_path = work_dir.join("emulator-ca.pem");
        std::fs::write(&ca_path, &tls.ca_pem)?;

        let mut registered = Vec::new();
        for c in &b.certificates {
            let der = certs::certificate_der(c)?;
            registered.push(RegisteredCert {
                x5t: jwt::b64url(&jwt::sha1_digest(&der)),
                x5t_s256: jwt::b64url(&jwt::sha2_digest(&der)),
                key: certs::certificate_public_key(&der)?,
            });
        }

        let http_listener = bind(b.http_port).await?;
        let https_listener = bind(b.https_port).await?;
        let http_addr = http_listener.local_addr()?;
        let https_addr = https_listener.local_addr()?;
        let federated_issuer = format!("http://{http_addr}/oidc");

        let counters = Arc::new(CounterCells::default());
        let faults = Faults::default();
        let identity_header = identity::guid();
        let key = signer.public_key().clone();
        let http = Arc::new(HttpState {
            issuer: Issuer {
                signer,
                tenant_id: b.tenant_id.clone(),
                lifetime: b.token_lifetime,
            },
            identities: Identities {
                tenant_id: b.tenant_id,
                system_assigned: b.system_assigned,
                user_assigned: b.user_assigned,
                service_principal: b.service_principal,
            },
            identity_header: identity_header.clone(),
            certs: registered,
            federated_issuer: federated_issuer.clone(),
            counters: counters.clone(),
            faults: faults.clone(),
        });

        let mut tasks = vec![
            tokio::spawn(http::serve(http_listener, None, http.clone())),
            tokio::spawn(http::serve(
                https_listener,
                Some(acceptor.clone()),
                http.clone(),
            )),
        ];

        let refuse_auths = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (redis, redis_addr, redis_tls_addr) = if b.redis {
            let server = proxy::start_redis_server(&b.redis_server).await?;
            let state = Arc::new(proxy::ProxyState::new(
                key.clone(),
                server.addr,
                counters.clone(),
                refuse_auths.clone(),
            ));
            let plain = bind(b.redis_port).await?;
            let tls_listener = bind(b.redis_tls_port).await?;
            let addrs = (plain.local_addr()?, tls_listener.local_addr()?);
            tasks.push(tokio::spawn(proxy::serve(plain, None, state.clone())));
            tasks.push(tokio::spawn(proxy::serve(
                tls_listener,
                Some(acceptor),
                state,
            )));
            (Some(server), Some(addrs.0), Some(addrs.1))
        } else {
            (None, None, None)
        };

        let mut cluster_addrs = Vec::new();
        let mut cluster_nodes = Vec::new();
        if b.cluster > 0 {
            if !b.redis {
                return Err(Error::Config(
                    "cluster mode needs redis (do not combine cluster() with without_redis())"
                        .into(),
                ));
            }
            if b.cluster > 16 {
                return Err(Error::Config(format!(
                    "cluster({}) asks for more than 16 primaries",
                    b.cluster
                )));
            }
            let mut listeners = Vec::new();
            for _ in 0..b.cluster {
                let l = bind(0).await?;
                cluster_addrs.push(l.local_addr()?);
                listeners.push(l);
            }
            let ports: Vec<u16> = cluster_addrs.iter().map(SocketAddr::port).collect();
            cluster_nodes = cluster::start_nodes(&b.redis_server, &work_dir, &ports).await?;
            for (listener, node) in listeners.into_iter().zip(&cluster_nodes) {
                let state = Arc::new(proxy::ProxyState::new(
                    key.clone(),
                    node.server.addr,
                    counters.clone(),
                    refuse_auths.clone(),
                ));
                tasks.push(tokio::spawn(proxy::serve(listener, None, state)));
            }
        }

        let emulator = Self {
            http_addr,
            https_addr,
            redis_addr,
            redis_tls_addr,
            identity_header,
            ca_pem: tls.ca_pem,
            server_thumbprint_sha1: tls.server_thumbprint_sha1,
            ca_path,
            federated_token_path: work_dir.join("azure-identity-token"),
            federated_issuer,
            federated_lifetime: b.federated_token_lifetime,
            work_dir,
            remove_work_dir,
            http,
            counters,
            refuse_auths,
            faults,
            tasks,
            _redis: redis,
            cluster_addrs,
            _cluster: cluster_nodes,
        };
        emulator.rotate_federated_token()?;
        tracing::info!(http = %http_addr, https = %https_addr, redis = ?redis_addr, "emulator started");
        Ok(emulator)
    }

    /// `http://127.0.0.1:<port>`: the value of `AZURE_POD_IDENTITY_AUTHORITY_HOST`; IMDS is at
    /// `<this>/metadata/identity/oauth2/token`.
    pub fn imds_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The full IMDS token URL (without query).
    pub fn imds_token_url(&self) -> String {
        format!("{}{}", self.imds_endpoint(), http::IMDS_PATH)
    }

    /// The App Service identity endpoint: the value of `IDENTITY_ENDPOINT`.
    pub fn app_service_endpoint(&self) -> String {
        format!("http://{}{}", self.http_addr, http::APP_SERVICE_PATH)
    }

    /// The value of `IDENTITY_HEADER` that `X-IDENTITY-HEADER` must carry.
    pub fn identity_header(&self) -> &str {
        &self.identity_header
    }

    /// `https://127.0.0.1:<port>`: the value of `AZURE_AUTHORITY_HOST` (trust [`Self::ca_cert_path`]).
    pub fn authority_host(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    /// The same endpoints over plain HTTP, `http://127.0.0.1:<port>` (also hosts the control API).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The Entra token URL over HTTPS: `{authority_host}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host(),
            self.http.identities.tenant_id
        )
    }

    /// Address of the plain Redis proxy (`None` with [`EmulatorBuilder::without_redis`]).
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.redis_addr
    }

    /// Address of the TLS Redis proxy (server name `localhost` or `127.0.0.1`, trust the CA).
    pub fn redis_tls_addr(&self) -> Option<SocketAddr> {
        self.redis_tls_addr
    }

    /// Path of the CA certificate (PEM) that signed the HTTPS / TLS server certificate.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of the federated token file (`AZURE_FEDERATED_TOKEN_FILE`).
    pub fn federated_token_file(&self) -> &Path {
        &self.federated_token_path
    }

    /// Writes a freshly issued federated (Kubernetes service-account) token to
    /// [`Self::federated_token_file`], as the kubelet does when it rotates it; returns it.
    pub fn rotate_federated_token(&self) -> Result<String, Error> {
        let sp = &self.http.identities.service_principal;
        let now = now_secs();
        let claims = json!({
            "aud": [TOKEN_EXCHANGE_AUDIENCE],
            "iss": self.federated_issuer,
            "sub": sp.federated_subject,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(issuer::whole_secs(self.federated_lifetime)),
            "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "workload-identity-sa"}},
        });
        let mut header = Map::new();
        header.insert("kid".into(), Value::from(self.http.issuer.signer.kid()));
        let token = self.http.issuer.signer.sign(Alg::Rs256, header, &claims);
        let tmp = self.federated_token_path.with_extension("tmp");
        std::fs::write(&tmp, &token)?;
        std::fs::rename(&tmp, &self.federated_token_path)?;
        Ok(token)
    }

    /// The tenant ID.
    pub fn tenant_id(&self) -> &str {
        &self.http.identities.tenant_id
    }

    /// The identities the emulator knows (IDs, the service principal's secret).
    pub fn identities(&self) -> &Identities {
        &self.http.identities
    }

    /// The `oid` of the system-assigned identity (or the service principal when there is none):
    /// a convenient Redis username for tests.
    pub fn default_oid(&self) -> &str {
        let ids = &self.http.identities;
        ids.system_assigned
            .as_ref()
            .map_or(ids.service_principal.object_id.as_str(), |m| {
                m.object_id.as_str()
            })
    }

    /// The proxies in front of the cluster nodes (empty unless
    /// [`EmulatorBuilder::cluster`] was set); any one of them is a valid seed for a cluster
    /// client.
    pub fn cluster_addrs(&self) -> &[SocketAddr] {
        &self.cluster_addrs
    }

    /// The environment a client needs, as `(name, value)` pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        let ids = &self.http.identities;
        let mut env = vec![
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", self.imds_endpoint()),
            ("IDENTITY_ENDPOINT", self.app_service_endpoint()),
            ("IDENTITY_HEADER", self.identity_header.clone()),
            ("AZURE_AUTHORITY_HOST", self.authority_host()),
            ("AZURE_TENANT_ID", ids.tenant_id.clone()),
            ("AZURE_CLIENT_ID", ids.service_principal.client_id.clone()),
            (
                "AZURE_CLIENT_SECRET",
                ids.service_principal.client_secret.expose().to_string(),
            ),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                self.federated_token_path.display().to_string(),
            ),
            ("SSL_CERT_FILE", self.ca_path.display().to_string()),
        ];
        if let Some(addr) = self.redis_addr {
            env.push(("REDIS_ENDPOINT", addr.to_string()));
        }
        if let Some(addr) = self.redis_tls_addr {
            env.push(("REDIS_TLS_ENDPOINT", addr.to_string()));
        }
        if !self.cluster_addrs.is_empty() {
            let list: Vec<String> = self.cluster_addrs.iter().map(|a| a.to_string()).collect();
            env.push(("REDIS_CLUSTER_ENDPOINTS", list.join(",")));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// Makes the Redis proxies refuse the next `n` `AUTH`s (and `HELLO … AUTH`s) with
    /// `WRONGPASS`, however valid their token: a server-side refusal a client must retry.
    /// Replaces any count still pending; `0` cancels.
    pub fn refuse_next_auths(&self, n: u64) {
        self.refuse_auths
            .store(n, std::sync::atomic::Ordering::Release);
    }

    /// How many of the refusals asked by [`Self::refuse_next_auths`] are still to come.
    pub fn auths_to_refuse(&self) -> u64 {
        self.refuse_auths.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The fault queue: inject, list and clear faults.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Upper-case hex SHA-1 of the https server certificate, the form Service Fabric's
    /// `IDENTITY_SERVER_THUMBPRINT` takes: a client pinning it reaches the https listener.
    pub fn server_thumbprint_sha1(&self) -> &str {
        &self.server_thumbprint_sha1
    }

    /// Mints an access token signed with the emulator key (no request, not counted).
    pub fn mint_token(&self, spec: &TokenSpec) -> String {
        self.http.issuer.mint(spec).token
    }

    /// A valid Redis token for [`Self::default_oid`] with the configured lifetime.
    pub fn redis_token(&self) -> String {
        self.mint_token(&TokenSpec::for_oid(self.default_oid()))
    }

    /// The emulator's token-signing public key (PEM, SPKI) for clients that verify tokens.
    pub fn signing_key_pem(&self) -> String {
        self.http.issuer.signer.public_key_pem()
    }
}

/// An [`Emulator`] on a runtime of its own, for blocking code; dereferences to [`Emulator`],
/// whose methods are all synchronous.
pub struct BlockingEmulator {
    emulator: Option<Emulator>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for BlockingEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlockingEmulator")
            .field(&self.emulator)
            .finish()
    }
}

impl std::ops::Deref for BlockingEmulator {
    type Target = Emulator;

    #[allow(clippy::expect_used)]
    fn deref(&self) -> &Emulator {
        self.emulator.as_ref().expect("emulator present until drop")
    }
}

impl Drop for BlockingEmulator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            let _guard = rt.enter();
            self.emulator.take();
            drop(_guard);
            rt.shutdown_background();
        }
    }
}
