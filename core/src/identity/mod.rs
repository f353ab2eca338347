//! Every Entra ID identity flow, as pure request builders and response parsers

pub mod authority;
mod common;
pub mod env;
pub mod imds;
pub mod managed;
