//! Captures everything every crate logs, through `log` and `tracing`, at TRACE, and looks for
//! secrets in it in every form they travel in
//!
//! The subscriber and the `log` bridge are process-wide: a test binary installs them once and
//! walks all its cases in one test, so nothing else writes into (or races for) the capture.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// Everything logged so far, shared with the subscriber's writer
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The captured text so far
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Installs (once) a TRACE subscriber for `tracing` plus the `log` bridge, writing into one buffer
///
/// The emulator runs in the same process and is the other end of every request: its own
/// events (`redis_entraid_emulator`) are left out, everything else is kept, including what
/// ureq (and its protocol crate ureq_proto), rustls and redis log.
pub(crate) fn install() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            tracing_log::LogTracer::builder()
                .with_max_level(tracing_log::log::LevelFilter::Trace)
                .init()
                .expect("no other logger is installed in this test binary");
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "trace,redis_entraid_emulator=off",
                ))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other subscriber is installed in this test binary");
            captured
        })
        .clone()
}

/// The forms a secret may take on its way out: raw, form-encoded (percent), a `Debug` byte
/// list (raw and form-encoded), base64 and base64url at each of the three alignments it can
/// have inside a longer encoded text
pub(crate) fn forms(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_owned()];
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    // `Debug` of a `Vec<u8>` body or header: the bytes as a decimal list
    for text in [secret, form.as_str()] {
        let list = format!("{:?}", text.as_bytes());
        out.push(
            list.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        );
    }
    out.push(form);
    for engine_url in [false, true] {
        for pad in 0..3usize {
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = if engine_url {
                URL_SAFE_NO_PAD.encode(&bytes)
            } else {
                STANDARD.encode(&bytes)
            };
            // Characters touching the padding bytes or the unknown neighbours differ from one
            // context to another: keep the stable middle.
            let start = if pad == 0 { 0 } else { 4 };
            let end = encoded.len().saturating_sub(4);
            if end > start + 8 {
                out.push(encoded[start..end].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The labels of the secrets found in `text` (by any of their forms), and any JWT in it
///
/// A JWT (tokens, client assertions, federated assertions) is found by shape, so secrets whose
/// value the test cannot know (a fresh signed assertion per request) are caught too.
///
/// Hex dumps (16 bytes a line, as `ureq_proto` writes every byte it sends and receives at
/// TRACE) are put back together and searched too: a secret cut across their lines is found.
pub(crate) fn leaks(text: &str, secrets: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    let dumped = hex_dumps(text);
    for (where_, text) in [("", text), (" in a hex dump", dumped.as_str())] {
        for (label, secret) in secrets {
            for form in forms(secret) {
                if text.contains(&form) {
                    found.push(format!(
                        "{label}{where_} (as `{}…`)",
                        &form[..form.len().min(6)]
                    ));
                    break;
                }
            }
        }
        if let Some(at) = find_jwt(text) {
            let context: String = text[at.saturating_sub(60)..].chars().take(100).collect();
            found.push(format!("a JWT{where_}, near: {context:?}"));
        }
    }
    found
}

/// The bytes of every hex-dump line in `text` (eight groups of four hex digits, `-` for the
/// padding of a last short line), joined in order, as text
fn hex_dumps(text: &str) -> String {
    let mut bytes = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let row = words.windows(8).find(|w| {
            w.iter()
                .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
                && w.iter().any(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
        });
        let Some(row) = row else { continue };
        for group in row {
            for pair in [&group[..2], &group[2..]] {
                if let Ok(b) = u8::from_str_radix(pair, 16) {
                    bytes.push(b);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The offset of something shaped like a JWT: `eyJ…` `.` `eyJ…` `.` signature
fn find_jwt(text: &str) -> Option<usize> {
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut from = 0;
    while let Some(i) = text[from..].find("eyJ") {
        let at = from + i;
        let segments: Vec<&str> = text[at..]
            .split(|c: char| !(b64url(c) || c == '.'))
            .next()
            .unwrap_or("")
            .split('.')
            .collect();
        if segments.len() >= 3
            && segments[0].len() >= 10
            && segments[1].starts_with("eyJ")
            && segments[1].len() >= 10
            && segments[2].len() >= 16
        {
            return Some(at);
        }
        from = at + 3;
    }
    None
}
