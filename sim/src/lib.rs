//! sim crate (being built).
