//! Real clusters of systems that no one here wrote, on loopback, for the profile-driven upgrade tests
//! (docs/real-clusters.md): each module starts one, writes to it through the system's own client, and stops every
//! process it started on drop.

pub mod etcd;
pub mod patroni;
