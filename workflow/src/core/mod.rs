//! The pure upgrade workflow core (being built).
