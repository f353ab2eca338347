//! Every Entra ID identity flow, as pure request builders and response parsers

// `ResponseError` carries Entra's error body inline (about 170 bytes). A fetch fails at most a few
// times a minute, so moving it costs nothing; boxing it would change `error.rs`'s shared API.
#![allow(clippy::result_large_err)]

mod source;
pub use source::{Fetch, FetchContext, RequestMeta, Step, TokenSource};
pub mod chain;

pub mod app_service;
pub mod arc;
pub mod authority;
pub mod azure_ml;
pub mod cli;
#[cfg(feature = "certificate")]
pub mod client_certificate;
pub mod client_secret;
pub mod cloud_shell;
mod common;
pub mod custom;
pub mod entra;
pub mod env;
pub mod imds;
pub mod managed;
pub mod service_fabric;
pub mod workload;
