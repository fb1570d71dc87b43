//! A cluster of real nats-servers with JetStream for one test: each member a
//! [`NatsServer`] (a free client port, its own store dir, restartable on
//! both, stopped on drop) with a `cluster` block (a free route port, routes
//! to the others) and its own `server_name`. Streams and buckets created
//! with `num_replicas` up to the cluster's size are replicated across it.
//!
//! Clients connect with every member's URL ([`NatsCluster::urls`]) and move
//! to another member when theirs goes away. A member is killed, stopped and
//! started again through [`NatsCluster::server_mut`] with [`NatsServer`]'s
//! own `stop`, `terminate` and `start_again`; a restarted member is ready
//! once it answers JetStream requests again, which takes a meta leader, so a
//! quorum of the members.

use anyhow::Context as _;
use async_nats::ServerAddr;

use crate::nats::{free_port, Member, NatsServer};

/// The `cluster_name` of every test cluster.
const CLUSTER_NAME: &str = "baton-test";

/// A running cluster of nats-servers with JetStream.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `size` members (`n1`, `n2`, ...), each routing to all the
    /// others, and wait until every one answers JetStream requests: the
    /// cluster has elected a meta leader.
    pub async fn start(size: usize) -> anyhow::Result<NatsCluster> {
        Self::start_partly(size, size).await
    }

    /// Like [`NatsCluster::start`], but only the first `up` members are
    /// started (they must be a quorum); the others are left for
    /// [`NatsServer::start_again`], as when a cluster's servers boot one
    /// after another and clients start meanwhile.
    pub async fn start_partly(size: usize, up: usize) -> anyhow::Result<NatsCluster> {
        anyhow::ensure!(
            up > size / 2 && up <= size,
            "{up} of {size} members started is not a quorum"
        );
        anyhow::ensure!(
            (1..=5).contains(&size),
            "a test cluster has 1 to 5 members, not {size}"
        );
        let route_ports = (0..size)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let mut servers = Vec::with_capacity(size);
        for (i, port) in route_ports.iter().enumerate() {
            let member = Member {
                name: format!("n{}", i + 1),
                cluster: CLUSTER_NAME.into(),
                route_port: *port,
                routes: route_ports.iter().filter(|p| *p != port).copied().collect(),
            };
            servers.push(NatsServer::unstarted(true, Some(member))?);
        }
        // All up before any is waited for: none is ready without a quorum.
        for server in &mut servers[..up] {
            server.launch()?;
        }
        for server in &mut servers[..up] {
            server
                .wait_ready()
                .await
                .with_context(|| format!("cluster member {:?}", server.server_name()))?;
        }
        Ok(NatsCluster { servers })
    }

    /// Every member's URL, comma-separated (what `--nats` and
    /// `BATON_NATS_URL` take).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every member's address, for `async_nats::connect`.
    pub fn addrs(&self) -> Vec<ServerAddr> {
        addrs(&self.servers)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn server(&self, index: usize) -> &NatsServer {
        &self.servers[index]
    }

    /// A member, to stop, kill, freeze or start again.
    pub fn server_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.servers[index]
    }

    /// The index of the member that leads `stream`'s RAFT group now.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        stream_leader(&self.servers, stream).await
    }

    /// The members, each stopped when dropped (for a test environment that
    /// holds them in its own fields).
    pub fn into_servers(self) -> Vec<NatsServer> {
        self.servers
    }
}

fn addrs<'m>(members: impl IntoIterator<Item = &'m NatsServer>) -> Vec<ServerAddr> {
    members
        .into_iter()
        .filter_map(|s| s.url().parse().ok())
        .collect()
}

/// The index in `members` of the one that leads `stream`'s RAFT group now
/// (asked through any member that runs).
pub async fn stream_leader<'m>(
    members: impl IntoIterator<Item = &'m NatsServer>,
    stream: &str,
) -> anyhow::Result<usize> {
    let members: Vec<&NatsServer> = members.into_iter().collect();
    let js = async_nats::jetstream::new(async_nats::connect(addrs(members.iter().copied())).await?);
    let info = js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?
        .info()
        .await?
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .with_context(|| format!("stream {stream} has no leader"))?;
    members
        .iter()
        .position(|s| s.server_name() == Some(leader.as_str()))
        .with_context(|| format!("stream {stream}'s leader {leader} is not a member"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::{self, stream};

    async fn connect(cluster: &NatsCluster) -> jetstream::Context {
        jetstream::new(async_nats::connect(cluster.addrs()).await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_replicated_stream_keeps_its_messages_while_any_one_member_is_down() {
        let mut cluster = NatsCluster::start(3).await.unwrap();
        assert_eq!(cluster.urls().split(',').count(), 3);
        crate::nats::keep_one_message(&connect(&cluster).await, 3).await;
        // The leader goes: another member takes over with the message.
        let leader = cluster.stream_leader("KEEP").await.unwrap();
        let gone = cluster.server(leader).server_name().unwrap().to_string();
        cluster.server_mut(leader).stop();
        assert!(!cluster.server(leader).is_running());
        let js = connect(&cluster).await;
        let taken_over = crate::wait_until_async(std::time::Duration::from_secs(30), || {
            let (js, gone) = (js.clone(), gone.clone());
            async move {
                let Ok(mut keep) = js.get_stream("KEEP").await else {
                    return false;
                };
                keep.info().await.is_ok_and(|i| {
                    let leader = i.cluster.as_ref().and_then(|c| c.leader.clone());
                    i.state.messages == 1 && leader.is_some_and(|l| l != gone)
                })
            }
        })
        .await;
        assert!(taken_over, "no other member took the stream over");
        // Back on the same ports and store: ready once it rejoined.
        let port = cluster.server(leader).port();
        cluster.server_mut(leader).start_again().await.unwrap();
        assert_eq!(cluster.server(leader).port(), port);
        let only_it = async_nats::connect(cluster.server(leader).url())
            .await
            .unwrap();
        let js = jetstream::new(only_it);
        // Its first JetStream request may time out while it catches up with the others (seen in CI): asked
        // again until it answers with the message, 30 s at most.
        let rejoined = crate::wait_until_async(std::time::Duration::from_secs(30), || {
            let js = js.clone();
            async move {
                match js.get_stream("KEEP").await {
                    Ok(mut keep) => keep.info().await.is_ok_and(|i| i.state.messages == 1),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(
            rejoined,
            "the restarted member never answered with the stream's message"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn more_replicas_than_members_are_refused() {
        let cluster = NatsCluster::start(3).await.unwrap();
        let refused = connect(&cluster)
            .await
            .create_stream(stream::Config {
                name: "FIVE".into(),
                subjects: vec!["five.>".into()],
                num_replicas: 5,
                ..Default::default()
            })
            .await;
        assert!(refused.is_err(), "{refused:?}");
    }
}
