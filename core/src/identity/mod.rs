//! Every Entra ID identity flow, as pure request builders and response parsers
//!
//! Nothing here does I/O: no sockets, no files, no environment, no clock, no OS randomness.
//! Each flow is a configuration type with `build_request(..) -> IdentityRequest` and
//! `parse_response(&http::Response<Vec<u8>>) -> Result<TokenResponse, ResponseError>`; the
//! environment comes in as an explicit map ([`env::EnvSource`]), time and randomness as
//! arguments ([`FetchContext`]). Every parser accepts numbers as JSON numbers or numeric strings
//! and the legacy date forms of `expires_on`, reads `refresh_in` when present, classifies each
//! failure as retryable or not by the flow's rules (azure-protocols §11), reads `Retry-After`,
//! and surfaces Entra's error body (`error`, `error_description`, `error_codes`,
//! `correlation_id`, `trace_id`) in the error. Secrets live in [`SecretString`] /
//! [`SecretBytes`] and never appear in a `Debug` output or an error message.
//!
//! | flow | module | request | configured from |
//! |---|---|---|---|
//! | VM / VMSS / AKS node (IMDS) | [`imds`] | `GET 169.254.169.254/...`, `Metadata: true` | `AZURE_POD_IDENTITY_AUTHORITY_HOST` |
//! | App Service / Functions | [`app_service`] | `GET {IDENTITY_ENDPOINT}`, `X-IDENTITY-HEADER` | `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` |
//! | App Service legacy | [`app_service`] | `GET {MSI_ENDPOINT}`, `secret` | code only |
//! | Azure Arc | [`arc`] | challenge, key file, `Authorization: Basic` | `IDENTITY_ENDPOINT`, `IMDS_ENDPOINT` |
//! | Cloud Shell | [`cloud_shell`] | form `POST {MSI_ENDPOINT}` | `MSI_ENDPOINT` |
//! | Service Fabric | [`service_fabric`] | `GET` https, `Secret`, pinned thumbprint | `IDENTITY_*` (3 variables) |
//! | Azure ML | [`azure_ml`] | `GET {MSI_ENDPOINT}`, `secret`, `clientid` | `MSI_ENDPOINT`, `MSI_SECRET` |
//! | workload identity | [`workload`] | form `POST` with the projected token | `AZURE_FEDERATED_TOKEN_FILE`, ... |
//! | client secret | [`client_secret`] | form `POST` | `AZURE_CLIENT_SECRET`, ... |
//! | client certificate | `client_certificate` (feature `certificate`, on by default; PKCS#12 files with feature `pkcs12`) | form `POST` with a PS256/RS256 assertion | `AZURE_CLIENT_CERTIFICATE_PATH`, ... |
//! | Azure CLI / azd | [`cli`] | a [`cli::CommandSpec`] | — |
//! | callback / fixed token | [`custom`] | — | code only |
//! | default chain | [`chain`] | the above in order | the whole environment |
//!
//! [`managed::ManagedIdentity::detect`] picks the managed-identity host from the environment.
//! [`TokenSource`] unites all flows, and a [`Fetch`] walks one token fetch as [`Step`]s that a
//! runtime executes with one small loop, shown on [`Fetch`]: that loop is the whole contract
//! between this module and a runtime.
//!
//! [`SecretString`]: crate::secret::SecretString
//! [`SecretBytes`]: crate::secret::SecretBytes

// `ResponseError` carries Entra's error body inline (about 170 bytes). A fetch fails at most a few
// times a minute, so moving it costs nothing; boxing it would change `error.rs`'s shared API.
#![allow(clippy::result_large_err)]

mod request;
mod source;
pub use http_config::HttpConfig;
pub use request::IdentityRequest;
pub use source::{Fetch, FetchContext, RequestMeta, Step, TokenSource};

pub mod app_service;
pub mod arc;
pub mod authority;
pub mod azure_ml;
pub mod chain;
pub mod cli;
#[cfg(feature = "certificate")]
pub mod client_certificate;
pub mod client_secret;
pub mod cloud_shell;
mod common;
pub mod custom;
pub mod entra;
pub mod env;
pub mod executor;
mod http_config;
pub mod imds;
pub mod managed;
pub mod service_fabric;
pub mod workload;
