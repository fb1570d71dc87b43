//! Baton's workflow: the pure upgrade core ([`core`]) and, with the `service`
//! feature (on by default), the workflow service that drives it over NATS and
//! the sled log.

pub mod core;

#[cfg(feature = "service")]
pub mod service;

/// The wire contract, re-exported so that `workflow::protocol` names it.
#[cfg(feature = "service")]
pub use protocol;
