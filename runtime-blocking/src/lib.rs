//! redis-entraid driver for the blocking runtime (filled by its own issue)
