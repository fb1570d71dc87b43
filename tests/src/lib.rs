//! Test support: nats-server harness and process helpers.
