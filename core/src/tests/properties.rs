//! Placeholder replaced below
