//! store crate (being built).
