//! The store's integration tests: behaviour of the public API, export round trips, corruption detection and
//! crash survival (with a real child process killed by SIGKILL).

mod api;
mod corruption;
mod crash;
mod export;
mod migration;
mod snapshot;
mod support;
