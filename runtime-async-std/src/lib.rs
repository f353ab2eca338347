//! redis-entraid driver for the async-std runtime (filled by its own issue)
