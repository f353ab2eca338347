//! The leak capture of `secrets.rs` detects leaks: a deliberately leaking client (ureq 2, which
//! logs the request prelude with every header but `Authorization` and `Cookie` through `log`
//! at DEBUG), deliberately leaking log lines, a hex dump cutting a secret across lines (as
//! ureq 3's `ureq_proto` writes at TRACE) and `Debug` output are all caught
//!
//! Its own binary: the capture is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

#[path = "common/capture.rs"]
mod capture;

use base64::Engine;
use redis_entraid_emulator::Emulator;

#[test]
fn the_capture_detects_each_form_of_a_leaked_secret() {
    let captured = capture::install();
    let emu = Emulator::start_blocking(Emulator::builder().without_redis()).unwrap();
    let header = emu.identity_header().to_owned();
    let secrets = vec![("identity header".to_owned(), header.clone())];
    assert!(capture::leaks(&captured.text(), &secrets).is_empty());

    // A dependency logging through `log`: ureq 2 writes the App Service secret header.
    let _ = ureq::get(&emu.app_service_endpoint())
        .set("X-IDENTITY-HEADER", &header)
        .call();
    let logs = captured.text();
    assert_eq!(
        capture::leaks(&logs, &secrets).len(),
        1,
        "the header ureq logged at DEBUG was caught:\n{logs}"
    );

    // Every encoded form, through `tracing` and `log`, and in `Debug` of a request body.
    let secret = "s3cr~t/with+odd=chars&more-than-twenty-bytes";
    let secrets = vec![("secret".to_owned(), secret.to_owned())];
    let form = format!(
        "client_secret={}",
        form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
    );
    let request = http::Request::new(form.clone().into_bytes());
    let leaking = [
        form.clone(),
        format!("{request:?}"),
        format!(
            "x{}",
            base64::engine::general_purpose::STANDARD.encode(format!("a{secret}"))
        ),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("ab{secret}")),
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzb21lb25lIn0.c2lnbmF0dXJlLW9mLWEtand0".to_owned(),
    ];
    // A hex dump (ureq_proto's TRACE format: 16 bytes a line, hex then printable text) cuts
    // the secret across lines; it is put back together.
    let dump = format!("POST /token HTTP/1.1\r\n\r\n{form}");
    let before = captured.text().len();
    for row in dump.as_bytes().chunks(16) {
        let mut line = String::new();
        for i in 0..16 {
            match row.get(i) {
                Some(b) => line.push_str(&format!("{b:02x}")),
                None => line.push_str("--"),
            }
            if i % 2 == 1 {
                line.push(' ');
            }
        }
        line.push(' ');
        line.extend(
            row.iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }),
        );
        // Through `tracing`: blocking-io compiles `log` records above DEBUG out.
        tracing::trace!(target: "leaky_dump", "{line}");
    }
    let text = captured.text();
    let fresh = &text[before..];
    assert!(
        fresh.lines().all(|l| !l.contains(secret)),
        "no single line holds the secret"
    );
    assert!(
        !capture::leaks(fresh, &secrets).is_empty(),
        "the hex-dumped secret was caught: {fresh}"
    );

    for (i, line) in leaking.iter().enumerate() {
        let before = captured.text().len();
        if i % 2 == 0 {
            tracing::debug!(target: "leaky", "{line}");
        } else {
            tracing_log::log::debug!(target: "leaky", "{line}");
        }
        let text = captured.text();
        let fresh = &text[before..];
        assert!(
            !capture::leaks(fresh, &secrets).is_empty(),
            "leak {i} was caught: {fresh}"
        );
    }
}
