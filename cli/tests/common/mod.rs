//! Runs the real `redis-entraid` binary against an emulator started in this process
//!
//! The binary gets a clean environment holding only the variables a test names, so what it
//! finds is what an application on that host would find.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of this module

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use redis_entraid_emulator::{BlockingEmulator, ClientCertificate, Emulator, EmulatorBuilder};

/// An emulator with a registered client certificate (its PEM, key included, in a file)
pub struct Env {
    pub emu: BlockingEmulator,
    pub cert_pem: PathBuf,
}

pub fn start(builder: EmulatorBuilder, tag: &str) -> Env {
    let certificate =
        ClientCertificate::generate("redis-entraid-cli-test").expect("test certificate");
    let emu = Emulator::start_blocking(builder.client_certificate(certificate.certificate_pem()))
        .expect("the emulator starts (is redis-server installed? .ci/install-redis.sh)");
    let cert_pem = std::env::temp_dir().join(format!(
        "redis-entraid-cli-{tag}-{}.pem",
        std::process::id()
    ));
    std::fs::write(&cert_pem, certificate.pem()).expect("certificate file");
    Env { emu, cert_pem }
}

pub fn default_env(tag: &str) -> Env {
    start(
        Emulator::builder().token_lifetime(Duration::from_secs(3600)),
        tag,
    )
}

/// One identity flow: the `--source` value, its variables, the oid its tokens carry and the
/// name the tool should report
pub struct Flow {
    pub source: &'static str,
    pub vars: Vec<(String, String)>,
    pub oid: String,
    pub answered_by: &'static str,
}

impl Env {
    fn var(&self, name: &str) -> String {
        self.emu
            .env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("the emulator exports {name}"))
    }

    fn vars(&self, names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), self.var(n)))
            .collect()
    }

    pub fn sp_oid(&self) -> String {
        self.emu.identities().service_principal.object_id.clone()
    }

    pub fn mi_oid(&self) -> String {
        self.emu.default_oid().to_owned()
    }

    /// Every flow the emulator offers
    pub fn flows(&self) -> Vec<Flow> {
        let entra = [
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_ID",
            "AZURE_AUTHORITY_HOST",
            "SSL_CERT_FILE",
        ];
        let mut cert = self.vars(&entra);
        cert.push((
            "AZURE_CLIENT_CERTIFICATE_PATH".into(),
            self.cert_pem.display().to_string(),
        ));
        let with = |extra: &str| {
            let mut v = self.vars(&entra);
            v.push((extra.to_owned(), self.var(extra)));
            v
        };
        vec![
            Flow {
                source: "secret",
                vars: with("AZURE_CLIENT_SECRET"),
                oid: self.sp_oid(),
                answered_by: "client secret",
            },
            Flow {
                source: "certificate",
                vars: cert,
                oid: self.sp_oid(),
                answered_by: "client certificate",
            },
            Flow {
                source: "workload",
                vars: with("AZURE_FEDERATED_TOKEN_FILE"),
                oid: self.sp_oid(),
                answered_by: "workload identity",
            },
            Flow {
                source: "imds",
                vars: self.vars(&["AZURE_POD_IDENTITY_AUTHORITY_HOST"]),
                oid: self.mi_oid(),
                answered_by: "managed identity (IMDS)",
            },
            Flow {
                source: "app-service",
                vars: self.vars(&["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]),
                oid: self.mi_oid(),
                answered_by: "managed identity (App Service)",
            },
            Flow {
                source: "managed",
                vars: self.vars(&["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]),
                oid: self.mi_oid(),
                answered_by: "managed identity (App Service)",
            },
            Flow {
                source: "default",
                vars: self.vars(&["AZURE_POD_IDENTITY_AUTHORITY_HOST"]),
                oid: self.mi_oid(),
                answered_by: "managed identity (IMDS)",
            },
            Flow {
                source: "default",
                vars: with("AZURE_CLIENT_SECRET"),
                oid: self.sp_oid(),
                answered_by: "client secret",
            },
        ]
    }

    pub fn tls_url(&self) -> String {
        format!(
            "rediss://localhost:{}",
            self.emu.redis_tls_addr().expect("TLS proxy").port()
        )
    }

    pub fn plain_url(&self) -> String {
        format!("redis://{}", self.emu.redis_addr().expect("proxy"))
    }

    pub fn ca(&self) -> (String, String) {
        (
            "SSL_CERT_FILE".to_owned(),
            self.emu.ca_cert_path().display().to_string(),
        )
    }
}

/// The binary with a clean environment plus `vars`
pub fn cli(args: &[&str], vars: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-entraid"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn run(args: &[&str], vars: &[(String, String)]) -> Run {
    let out: Output = cli(args, vars).output().expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn spawn(args: &[&str], vars: &[(String, String)]) -> Child {
    cli(args, vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// A loopback port nothing listens on (bound, then released)
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Every JWT-looking string a token could be (three base64url parts), to prove none leaked
pub fn assert_no_token(text: &str) {
    let leaked = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .any(|w| w.starts_with("eyJ") && w.matches('.').count() == 2);
    assert!(!leaked, "a token appeared in the output:\n{text}");
}

/// No panic message or backtrace, and the error is one line (plus at most a hint line)
pub fn assert_clean_error(run: &Run) {
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!run.stderr.contains("RUST_BACKTRACE"), "{}", run.stderr);
    let errors: Vec<_> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", run.stderr);
}
