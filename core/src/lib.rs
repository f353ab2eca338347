//! redis-entraid-core: the sans-IO heart of redis-entraid
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod config;
pub mod error;
pub mod identity;
pub mod jwt;
pub mod secret;
pub mod token;
