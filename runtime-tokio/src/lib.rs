//! redis-entraid driver for the tokio runtime (filled by its own issue)
