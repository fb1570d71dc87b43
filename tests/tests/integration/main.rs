//! The one integration test binary of the workspace. Each area is a module;
//! tests that need NATS start their own nats-server through `tests::nats`.

mod api;
mod attacks;
mod auth;
mod chaos;
mod checkpoints;
mod cli_exit;
mod config_file;
mod conventions;
mod e2e;
mod executor;
mod fleet;
mod lease;
mod limits;
mod metrics;
mod nats_cluster;
mod packaging;
mod profile;
mod real_baton;
mod real_etcd;
mod real_patroni;
mod report;
mod sim;
mod ssh;
mod store;
mod view;
mod walkthrough;
