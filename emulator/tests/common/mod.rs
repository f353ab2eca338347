//! Helpers shared by the emulator's integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::result_large_err
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use redis_entraid_emulator::{BlockingEmulator, Emulator, EmulatorBuilder};
use serde_json::Value;

pub fn start(builder: EmulatorBuilder) -> BlockingEmulator {
    Emulator::start_blocking(builder).expect("emulator starts")
}

pub fn with_lifetime(secs: u64) -> BlockingEmulator {
    start(Emulator::builder().token_lifetime(Duration::from_secs(secs)))
}

/// The claims of a JWT (not verified).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three segments");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

pub fn header(token: &str) -> Value {
    let h = token.split('.').next().expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).expect("base64url")).expect("JSON")
}

/// Seconds since the epoch with sub-second precision.
pub fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A raw RESP client: exact bytes out, one decoded frame (raw bytes) in.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub resp3: bool,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
            resp3: false,
        }
    }

    pub fn encode(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    pub fn send(&mut self, args: &[&str]) {
        self.stream.write_all(&Self::encode(args)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one frame; `None` when the server closed the connection.
    pub fn read(&mut self) -> Option<Bytes> {
        loop {
            let decoded = if self.resp3 {
                redis_protocol::resp3::decode::complete::decode_bytes_mut(&mut self.buf)
                    .unwrap()
                    .map(|(_, _, raw)| raw)
            } else {
                redis_protocol::resp2::decode::decode_bytes_mut(&mut self.buf)
                    .unwrap()
                    .map(|(_, _, raw)| raw)
            };
            if let Some(raw) = decoded {
                return Some(raw);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a command and returns its reply as text.
    pub fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.read_text()
    }

    pub fn read_text(&mut self) -> String {
        String::from_utf8_lossy(&self.read().expect("a reply, not a closed connection"))
            .into_owned()
    }

    /// Blocks until the server closes the connection; true if it did within `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// A ureq agent that trusts the emulator's CA.
pub fn https_agent(ca_pem: &str) -> ureq::Agent {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(Duration::from_secs(10))
        .build()
}

pub fn http_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

/// Status and JSON body of a request, whatever the status.
pub fn json_of(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
