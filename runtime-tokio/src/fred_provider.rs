//! fred integration (filled below)
