//! `redis-entraid token`: one token and who it is for

use std::time::Duration;

use crate::acquire;
use crate::advice;
use crate::error::CliError;
use crate::source::{self, SourceArg};
use crate::style::Style;

/// Acquires one token and prints what a person needs to know about it
///
/// # Errors
/// A usage error when the source cannot be configured; a failure when the request fails.
pub(crate) fn run(
    source: SourceArg,
    scope: Option<&str>,
    timeout: Duration,
    json: bool,
    show_token: bool,
) -> Result<i32, CliError> {
    let token_source = source::token_source(source, scope)?;
    let imds = acquire::is_imds(&token_source);
    let fetcher = acquire::fetcher(token_source)?;
    let acquired = acquire::acquire(&fetcher, timeout).map_err(|(error, took)| {
        CliError::failed(format!(
            "no token from {} after {}ms",
            fetcher_name(source),
            took.as_millis()
        ))
        .cause(error.clone())
        .advice(advice::for_fetch(&error, imds))
    })?;
    if show_token {
        eprintln!(
            "{} the access token is printed below: it is a secret, valid for {}s; do not paste it anywhere",
            Style::stderr().yellow("warning:"),
            acquired.lifetime_left().unwrap_or(0)
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&acquired.to_json(show_token)).unwrap_or_default()
        );
    } else {
        let out = Style::stdout();
        let c = &acquired.claims;
        let none = || "(none)".to_owned();
        let when = |t: Option<i64>| {
            t.map_or_else(none, |t| {
                let ago = acquire::unix(acquired.received_wall) - t;
                if ago >= 0 {
                    format!("{t} ({ago}s ago)")
                } else {
                    format!("{t} (in {}s)", -ago)
                }
            })
        };
        let row = |k: &str, v: String| println!("{:<14}{v}", out.bold(k));
        row("source", acquired.answered_by.clone());
        row(
            "oid",
            format!(
                "{} (the Redis username)",
                c.oid.clone().unwrap_or_else(none)
            ),
        );
        row("tid", c.tid.clone().unwrap_or_else(none));
        let aud = if c.aud.is_empty() {
            none()
        } else {
            c.aud.join(", ")
        };
        row(
            "aud",
            if c.audience_is_redis() {
                format!("{aud} {}", out.green("(Redis)"))
            } else {
                format!("{aud} {}", out.red("(not Redis: wrong scope)"))
            },
        );
        row("appid", c.app.clone().unwrap_or_else(none));
        if let Some(idtyp) = &c.idtyp {
            row("idtyp", idtyp.clone());
        }
        row("issued", when(c.iat));
        row("expires", when(c.exp));
        row(
            "lifetime left",
            acquired
                .lifetime_left()
                .map_or_else(none, |s| format!("{s}s")),
        );
        row("request took", format!("{}ms", acquired.took.as_millis()));
        if show_token {
            row(
                "access token",
                acquired.token.access_token.expose_secret().to_owned(),
            );
        }
    }
    Ok(if acquired.claims.audience_is_redis() {
        0
    } else {
        crate::error::EXIT_FAILED
    })
}

fn fetcher_name(source: SourceArg) -> String {
    format!("--source {source}")
}
