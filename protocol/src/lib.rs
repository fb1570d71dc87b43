//! The wire contract between the Baton workflow service and its executors.
//!
//! Everything that travels over NATS is defined here, in one place, so both
//! sides agree by construction: subject names ([`subjects`]), the JetStream
//! streams, consumers and buckets and their options ([`setup`]), the step
//! request and step result messages ([`messages`]), presence records
//! ([`presence`]), step claims (the `baton_claims` bucket: the first executor
//! of a group to claim `<upgrade>.<step>.<attempt>` is the only one that may
//! run it). The `baton.api.<verb>` request/reply types live with the service
//! that answers them (`workflow::service::api`).
//!
//! Messages are versioned JSON: unknown fields are ignored so a newer peer may
//! add fields, and a malformed message is refused by [`messages::decode_request`]
//! / [`messages::decode_result`] with a [`DecodeError`] that names the field.

pub mod connect;
pub mod decode;
#[cfg(feature = "dev-tls")]
pub mod devtls;
pub mod error;
pub mod messages;
pub mod natsconf;
pub mod presence;
pub mod setup;
pub mod sign;
pub mod subjects;

pub use decode::DecodeError;
pub use error::ProtocolError;
pub use messages::{
    decode_request, decode_result, is_sha256_hex, Outcome, RequestIds, StepRequest, StepResult,
    MAX_OUTPUT, PROFILE_FILE_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use presence::Presence;
pub use setup::{ensure, ensure_group_consumer, Options};
