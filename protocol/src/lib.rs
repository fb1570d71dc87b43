//! protocol crate (being built).
