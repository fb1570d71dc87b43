//! executor crate (being built).
