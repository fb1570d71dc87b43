//! Which executors are online, kept up to date from a watch of the presence bucket (issue 16).
//!
//! Executors heartbeat a signed record into the `baton_presence` KV bucket, which expires it after
//! `presence_ttl` without a heartbeat. `submit`, `plan` and `baton executors` need the live records; reading
//! every key one by one on each call cost one NATS round trip per executor (21.7 s of the 23.9 s the service
//! spent on 200 submits with 150 executors). Instead one task watches the bucket and keeps a map; readers take
//! it under a short read lock.
//!
//! Expiry sends no message to a watcher, so each entry carries its own deadline: its put time plus the TTL,
//! on this service's clock (`put_time`: the time it arrived, or for a record replayed at start the server's
//! put time, never later than now): past the first heartbeat, the two clocks need not agree. A deleted or purged key (an executor that stopped
//! cleanly) goes at once. Until the watch has caught up with the bucket's current values, readers fall back to
//! reading the bucket directly, so a request right after start sees what it always saw.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

/// One opened record and when it expires (unix ms).
#[derive(Debug, Clone)]
struct Live {
    presence: protocol::Presence,
    name: String,
    expires_ms: u64,
}

/// The live presence records, by KV key.
#[derive(Debug, Default)]
pub(crate) struct PresenceView {
    entries: RwLock<BTreeMap<String, Live>>,
    /// The watch has delivered every value the bucket held when it began.
    caught_up: AtomicBool,
}

/// The outcome of one watched entry, for the caller to count and log.
pub(crate) enum Applied {
    Kept,
    Removed,
    Refused(protocol::DecodeError),
}

impl PresenceView {
    /// The live records at `now_ms`, or `None` while the watch has not caught up yet.
    pub(crate) fn live(&self, now_ms: u64) -> Option<Vec<(protocol::Presence, String)>> {
        if !self.caught_up.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        Some(
            entries
                .values()
                .filter(|l| l.expires_ms > now_ms)
                .map(|l| (l.presence.clone(), l.name.clone()))
                .collect(),
        )
    }

    /// Applies one entry of the watch: a put is opened (signature, trust, group) and kept until
    /// `put_ms + ttl`; a delete or purge removes the key. A refused record also removes what the key held.
    pub(crate) fn apply(
        &self,
        key: &str,
        operation: kv::Operation,
        value: &[u8],
        put_ms: u64,
        ttl: Duration,
        trust: &protocol::sign::Trust,
    ) -> Applied {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if operation != kv::Operation::Put {
            entries.remove(key);
            return Applied::Removed;
        }
        match protocol::presence::open(value, key, trust) {
            Ok((presence, name)) => {
                let expires_ms = put_ms.saturating_add(ttl.as_millis() as u64);
                entries.insert(
                    key.to_string(),
                    Live {
                        presence,
                        name,
                        expires_ms,
                    },
                );
                Applied::Kept
            }
            Err(err) => {
                entries.remove(key);
                Applied::Refused(err)
            }
        }
    }

    fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Marks the view as caught up with the bucket.
    pub(crate) fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    /// Forgets everything (the watch is restarted after an error).
    fn reset(&self) {
        self.caught_up.store(false, Ordering::Release);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// When an entry was put, on this service's clock (which [`PresenceView::live`] is read with): `created_ms`
/// is the NATS server's. An entry that arrives once the view has caught up was put just now, whatever the
/// server's clock says; one replayed while catching up was put at `created_ms`, but never later than now.
/// With the server's time alone, a server clock behind this one by more than the TTL made every executor
/// look offline, and one ahead kept a crashed executor live for as long as the clocks were apart.
fn put_time(created_ms: u64, received_ms: u64, caught_up: bool) -> u64 {
    if caught_up {
        received_ms
    } else {
        created_ms.min(received_ms)
    }
}

/// Keeps `view` up to date from a watch of `bucket` until `shutdown`; a broken watch is begun again after a
/// pause (readers fall back to direct reads meanwhile). `refused` is called for each record that does not open.
pub(crate) async fn watch(
    bucket: kv::Store,
    view: std::sync::Arc<PresenceView>,
    ttl: Duration,
    trust: std::sync::Arc<protocol::sign::Trust>,
    shutdown: CancellationToken,
    refused: impl Fn(&str, &protocol::DecodeError),
) {
    loop {
        view.reset();
        let watched = tokio::select! {
            _ = shutdown.cancelled() => return,
            w = bucket.watch_all() => w,
        };
        match watched {
            Ok(mut entries) => {
                // An empty bucket delivers nothing to catch up with.
                if bucket.status().await.is_ok_and(|s| s.values() == 0) {
                    view.set_caught_up();
                }
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        next = entries.next() => next,
                    };
                    let entry = match next {
                        Some(Ok(entry)) => entry,
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "presence watch failed; starting it again");
                            break;
                        }
                        None => {
                            tracing::warn!("presence watch ended; starting it again");
                            break;
                        }
                    };
                    let created_ms =
                        u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000)
                            .unwrap_or(0);
                    let put_ms = put_time(created_ms, super::now_ms(), view.is_caught_up());
                    if let Applied::Refused(err) = view.apply(
                        &entry.key,
                        entry.operation,
                        &entry.value,
                        put_ms,
                        ttl,
                        &trust,
                    ) {
                        refused(&entry.key, &err);
                    }
                    if entry.delta == 0 || entry.seen_current {
                        view.set_caught_up();
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not watch the presence bucket; trying again")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::sign::{Identity, Trust};

    fn record(id: &str, group: &str) -> protocol::Presence {
        protocol::Presence {
            v: 1,
            id: id.into(),
            group: group.into(),
            nodes: vec![],
            version: "test".into(),
            host: "h".into(),
            pid: 1,
            started_ms: 1,
            heartbeat_ms: 1,
            executed: 0,
            rejected: 0,
            not_allowed: 0,
            conflicts: 0,
            malformed: 0,
            unsigned: 0,
            running: None,
            profile: None,
        }
    }

    #[test]
    fn records_live_until_their_ttl_go_on_delete_and_a_refused_put_leaves_the_key_empty() {
        let (service, exec, stranger) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let trust = Trust::parse(
            "trust.toml",
            &format!(
                "[service]\nkey = \"{}\"\n\n[[executor]]\nname = \"e1\"\nkey = \"{}\"\ngroup = \"g1\"\n",
                service.public_key(),
                exec.public_key()
            ),
        )
        .unwrap();
        let ttl = Duration::from_millis(30_000);
        let view = PresenceView::default();
        let key = protocol::presence::key("e1-id");
        let sealed = protocol::presence::seal(&record("e1-id", "g1"), &exec);
        assert!(matches!(
            view.apply(&key, kv::Operation::Put, &sealed, 1_000, ttl, &trust),
            Applied::Kept
        ));
        // Not caught up yet: readers go to the bucket.
        assert!(view.live(1_000).is_none());
        view.set_caught_up();
        let live = view.live(30_999).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!((live[0].0.group.as_str(), live[0].1.as_str()), ("g1", "e1"));
        // Expiry sends nothing: the entry's own deadline ends it.
        assert!(view.live(31_000).unwrap().is_empty());
        // A heartbeat extends it; a clean stop deletes it at once.
        view.apply(&key, kv::Operation::Put, &sealed, 20_000, ttl, &trust);
        assert_eq!(view.live(31_000).unwrap().len(), 1);
        view.apply(&key, kv::Operation::Delete, &[], 21_000, ttl, &trust);
        assert!(view.live(21_001).unwrap().is_empty());
        // A record signed by a key the trust file does not pin is refused, and so is one claiming another group.
        view.apply(&key, kv::Operation::Put, &sealed, 22_000, ttl, &trust);
        let forged = protocol::presence::seal(&record("e1-id", "g1"), &stranger);
        assert!(matches!(
            view.apply(&key, kv::Operation::Put, &forged, 23_000, ttl, &trust),
            Applied::Refused(_)
        ));
        assert!(
            view.live(23_001).unwrap().is_empty(),
            "the forged put displaced the record"
        );
        let other_group = protocol::presence::seal(&record("e1-id", "g2"), &exec);
        match view.apply(&key, kv::Operation::Put, &other_group, 24_000, ttl, &trust) {
            Applied::Refused(err) => assert_eq!(err.field, "group"),
            _ => panic!("a record claiming another group was kept"),
        }
        // A restarted watch forgets what it had until it catches up again.
        view.apply(&key, kv::Operation::Put, &sealed, 25_000, ttl, &trust);
        view.reset();
        assert!(view.live(25_001).is_none());
    }

    #[test]
    fn an_entry_lives_by_this_services_clock_whatever_the_servers_says() {
        let ttl = 30_000;
        let now = 1_000_000;
        // A heartbeat that arrives live from a server 60 s behind: live for the TTL from now.
        assert_eq!(put_time(now - 60_000, now, true) + ttl, now + ttl);
        // One from a server an hour ahead: gone a TTL after it came, not an hour later.
        assert_eq!(put_time(now + 3_600_000, now, true) + ttl, now + ttl);
        // While catching up, the server's time says how old a record is, but it cannot be in the future.
        assert_eq!(put_time(now - 10_000, now, false), now - 10_000);
        assert_eq!(put_time(now + 3_600_000, now, false), now);
    }
}
