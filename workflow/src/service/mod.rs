//! The workflow service (being built).
