//! The log compared with its mirror in `BATON_EVENTS`.
//!
//! Every appended event is mirrored as `{"upgrade","seq","hash","event"}` on
//! `baton.events.<upgrade>`: for watchers, and as an off-box copy of the chain.
//! The mirror is not the truth (the log, held by its signed checkpoints, is),
//! so a difference means one of them was altered: the mirror purged and
//! republished by someone with access to NATS, or the log rewritten by someone
//! holding the service's key (who can re-sign checkpoints, but cannot rewrite
//! what left the host).
//!
//! - `baton audit verify --mirror` reports every [`Difference`] (offline
//!   against a copy of the log, or through the service).
//! - The service compares the mirror of each unfinished upgrade at start and
//!   refuses to act on one whose mirror disagrees: it pauses it, naming the
//!   first difference, so an operator decides (`baton resume`) after looking.
//!   Events the mirror lacks are not a disagreement (a crash between the append
//!   and its mirroring leaves them out); they are mirrored again.

use std::collections::{BTreeMap, BTreeSet};

use store::StreamId;

use super::checkpoint::At;

/// One way the mirror and the log differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A message on the mirror that is not a mirrored event.
    Malformed { message: String },
    /// The mirror has another hash for an event than the log.
    Hash {
        upgrade: String,
        seq: u64,
        mirror: String,
        log: String,
    },
    /// The mirror has an event the log does not.
    NotInLog { upgrade: String, seq: u64 },
    /// The log has an event of a mirrored upgrade that the mirror lacks.
    NotMirrored { upgrade: String, seq: u64 },
    /// The log could not be read there.
    Unreadable {
        upgrade: String,
        seq: u64,
        error: String,
    },
}

impl Difference {
    /// Whether the mirror contradicts the log (rather than lacking an event,
    /// which a crash between an append and its mirroring explains).
    pub fn contradicts(&self) -> bool {
        !matches!(self, Difference::NotMirrored { .. })
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Malformed { message } => {
                write!(f, "a mirrored message is malformed: {message}")
            }
            Difference::Hash {
                upgrade,
                seq,
                mirror,
                log,
            } => write!(
                f,
                "upgrade {upgrade} seq {seq}: the mirror has hash {mirror}, the log {log}"
            ),
            Difference::NotInLog { upgrade, seq } => {
                write!(
                    f,
                    "upgrade {upgrade} seq {seq}: mirrored, but not in the log"
                )
            }
            Difference::NotMirrored { upgrade, seq } => {
                write!(
                    f,
                    "upgrade {upgrade} seq {seq}: in the log, not in the mirror"
                )
            }
            Difference::Unreadable {
                upgrade,
                seq,
                error,
            } => write!(f, "upgrade {upgrade} seq {seq}: {error}"),
        }
    }
}

/// The longest excerpt of a malformed message a difference quotes.
const QUOTE: usize = 200;

/// Compares mirrored messages (`{"upgrade","seq","hash",..}` each) with the
/// log's chains, read through `lookup`: every mirrored event must be in the
/// log with the same hash, and every logged event of a mirrored upgrade must
/// be mirrored, in a gap or, where `whole(upgrade)`, past the mirror's last
/// one. (An upgrade still running appends and then mirrors: read the mirror
/// first and the log after, and its tail past the mirror is not a
/// difference yet.)
pub fn differences(
    messages: impl IntoIterator<Item = serde_json::Value>,
    mut lookup: impl FnMut(StreamId, u64) -> Result<At, String>,
    whole: impl Fn(StreamId) -> bool,
) -> Vec<Difference> {
    let mut found = Vec::new();
    let mut mirrored: BTreeMap<StreamId, BTreeSet<u64>> = BTreeMap::new();
    for message in messages {
        let upgrade = message["upgrade"].as_str().unwrap_or_default();
        let (Ok(stream), Some(seq), Some(hash)) = (
            upgrade.parse::<StreamId>(),
            message["seq"].as_u64(),
            // A chain hash is 64 hex digits; anything else is quoted (bounded)
            // as malformed, never repeated whole into a report or a reason.
            message["hash"]
                .as_str()
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        ) else {
            let text = message.to_string();
            let cut = (0..=QUOTE.min(text.len()))
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            found.push(Difference::Malformed {
                message: text[..cut].to_string(),
            });
            continue;
        };
        mirrored.entry(stream).or_default().insert(seq);
        let upgrade = upgrade.to_string();
        match lookup(stream, seq) {
            Ok(At::Hash(h)) if hex::encode(h) == hash => {}
            Ok(At::Hash(h)) => found.push(Difference::Hash {
                upgrade,
                seq,
                mirror: hash.to_string(),
                log: hex::encode(h),
            }),
            Ok(At::Missing | At::NotHere) => found.push(Difference::NotInLog { upgrade, seq }),
            Err(error) => found.push(Difference::Unreadable {
                upgrade,
                seq,
                error,
            }),
        }
    }
    for (stream, seqs) in mirrored {
        let last = seqs.last().copied().unwrap_or(0);
        let whole = whole(stream);
        let mut seq = 1;
        while let Ok(At::Hash(_)) = lookup(stream, seq) {
            if seq > last && !whole {
                break;
            }
            if !seqs.contains(&seq) {
                found.push(Difference::NotMirrored {
                    upgrade: stream.to_string(),
                    seq,
                });
            }
            seq += 1;
        }
    }
    found
}

pub(crate) use service::of_upgrade;
pub use service::{read_subject, Read};

/// At start the service reads at most this many mirrored messages of an
/// upgrade whose log has `events` events: each event is mirrored once per
/// epoch at most (a retry within JetStream's duplicate window is dropped),
/// so twice the log and some slack is generous. More is a flooded mirror,
/// which is not read further (millions of messages on an open NATS would hold
/// the upgrade's recovery and the service's memory) and counts as a
/// difference.
pub fn start_limit(events: u64) -> u64 {
    events.saturating_mul(2).saturating_add(64)
}

/// What the start-up check keeps of one message mirrored on `upgrade`'s
/// subject: its `upgrade`, `seq` and `hash` (all [`differences`] reads, so a
/// large message costs no memory), or, for a message that is not a mirrored
/// event of this upgrade (not JSON, another upgrade named on this upgrade's
/// subject), a string quoting it, which [`differences`] reports as malformed.
pub fn kept(upgrade: &str, payload: &[u8]) -> serde_json::Value {
    let quote = |why: &str| {
        let text = String::from_utf8_lossy(payload);
        let cut = (0..=QUOTE.min(text.len()))
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        serde_json::Value::String(format!("{why}: {}", &text[..cut]))
    };
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(message) if message["upgrade"].as_str() == Some(upgrade) => serde_json::json!({
            "upgrade": message["upgrade"],
            "seq": message["seq"],
            "hash": message["hash"],
        }),
        Ok(_) => quote(&format!(
            "on the subject of upgrade {upgrade}, not an event of it"
        )),
        Err(_) => quote("not JSON"),
    }
}

mod service {
    use std::time::Duration;

    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt as _;

    use crate::service::{ServiceError, Shared};

    /// The most messages, and bytes, one pull of [`read_subject`] asks for:
    /// what it holds in flight (a mirrored event is at most about 768 KiB).
    const PAGE_MESSAGES: usize = 1024;
    const PAGE_BYTES: usize = 8 * 1024 * 1024;

    /// How long nats-server keeps [`read_subject`]'s consumer once nobody
    /// pulls from it (it is not deleted: that would be one more round trip
    /// on recovery's path).
    const IDLE: Duration = Duration::from_secs(5);

    /// How long [`read_subject`] waits for a page's pull to be answered, and for each of its messages.
    const PAGE_WAIT: Duration = Duration::from_secs(10);

    /// What [`read_subject`] read.
    pub struct Read<T> {
        /// Each message read, through `keep`, in stream order.
        pub kept: Vec<T>,
        /// The subject held more than `limit` messages: the rest were not read.
        pub more: bool,
        /// Round trips to JetStream it took.
        pub requests: u64,
    }

    /// Every message on `subject` (wildcards allowed) of `stream`, in stream
    /// order, up to `limit`, each given to `keep` (its stream sequence, its
    /// subject, its payload) and only what that returns kept.
    ///
    /// Read through one ephemeral consumer (no acks, in memory, one copy):
    /// one request creates it and says how many messages the subject holds,
    /// then one pull per page of [`PAGE_MESSAGES`] or [`PAGE_BYTES`] brings
    /// them, rather than one direct get per message (a recovery used to make
    /// one round trip per mirrored event of every unfinished upgrade). Should
    /// a pull fail midway (a message larger than a page, a consumer gone),
    /// the rest is read the old way, one by-subject get per message.
    pub async fn read_subject<T>(
        stream: &jetstream::stream::Stream,
        subject: &str,
        limit: u64,
        mut keep: impl FnMut(u64, &str, &[u8]) -> T,
    ) -> Result<Read<T>, String> {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_string(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: IDLE,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|err| format!("creating a consumer on {subject}: {err}"))?;
        let on_subject = consumer.cached_info().num_pending;
        let wanted = on_subject.min(limit);
        let mut read = Read {
            kept: Vec::with_capacity(usize::try_from(wanted.min(4096)).unwrap_or(4096)),
            more: on_subject > limit,
            requests: 1,
        };
        let mut next_seq = 1;
        let mut failed = None;
        while (read.kept.len() as u64) < wanted && failed.is_none() {
            let ask = usize::try_from(wanted - read.kept.len() as u64)
                .unwrap_or(PAGE_MESSAGES)
                .min(PAGE_MESSAGES);
            read.requests += 1;
            // A pull is a publish with a reply inbox and no expiry: were its answer lost (a connection reset after
            // the server answered), the batch would wait for ever, and the upgrade's recovery with it. Every wait
            // has a deadline; missing it falls back to the one-by-one reads, each a request with its own timeout.
            let pulled = tokio::time::timeout(
                PAGE_WAIT,
                consumer
                    .fetch()
                    .max_messages(ask)
                    .max_bytes(PAGE_BYTES)
                    .messages(),
            )
            .await;
            let mut batch = match pulled {
                Ok(Ok(batch)) => batch,
                Ok(Err(err)) => {
                    failed = Some(err.to_string());
                    break;
                }
                Err(_) => {
                    failed = Some(format!("no answer to a page's pull within {PAGE_WAIT:?}"));
                    break;
                }
            };
            let before = read.kept.len();
            loop {
                let message = match tokio::time::timeout(PAGE_WAIT, batch.next()).await {
                    Ok(Some(Ok(message))) => message,
                    Ok(None) => break,
                    // A pull that `max_bytes` closed after some messages ends with a status the client reports as
                    // an error (409): page on. With nothing read in this page, fall back.
                    Ok(Some(Err(err))) => {
                        if read.kept.len() == before {
                            failed = Some(err.to_string());
                        }
                        break;
                    }
                    Err(_) => {
                        failed = Some(format!("a page's messages stopped within {PAGE_WAIT:?}"));
                        break;
                    }
                };
                let seq = match message.info() {
                    Ok(info) => info.stream_sequence,
                    Err(err) => {
                        failed = Some(err.to_string());
                        break;
                    }
                };
                read.kept
                    .push(keep(seq, message.subject.as_str(), &message.payload));
                next_seq = seq + 1;
                if read.kept.len() as u64 >= wanted {
                    break;
                }
            }
            if failed.is_none() && read.kept.len() == before {
                // Nothing came: messages lost since (age, a purge), or a consumer behind its stream (on a NATS
                // cluster one copy of the consumer may sit on a lagging peer). The one-by-one reads, served by the
                // stream's leader, say which.
                failed = Some("a page brought nothing".to_string());
            }
        }
        // The consumer's count of the subject (and its deliveries) may come from a peer behind the stream's
        // leader: a short read would leave the mirror's tail uncompared. Ask the leader for the subject's last
        // message (one request); past what was read, read on one by one.
        if failed.is_none() && !read.more && !subject.contains(['*', '>']) {
            read.requests += 1;
            match stream.get_last_raw_message_by_subject(subject).await {
                Ok(last) if last.sequence >= next_seq && (read.kept.len() as u64) < limit => {
                    failed = Some(format!(
                        "the subject's last message ({}) is past the paged read (up to {})",
                        last.sequence,
                        next_seq.saturating_sub(1)
                    ));
                }
                Ok(_) => {}
                Err(err)
                    if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                }
                Err(err) => return Err(err.to_string()),
            }
        }
        if let Some(error) = failed {
            tracing::warn!(%subject, %error, read = read.kept.len(), "a paged read failed; reading the rest one message at a time");
            // To the subject's end (as the leader has it), up to `limit`: not only the count the consumer gave.
            while (read.kept.len() as u64) < limit {
                read.requests += 1;
                match stream
                    .get_first_raw_message_by_subject(subject, next_seq)
                    .await
                {
                    Ok(message) => {
                        next_seq = message.sequence + 1;
                        read.kept
                            .push(keep(message.sequence, &message.subject, &message.payload));
                    }
                    Err(err)
                        if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                    {
                        break
                    }
                    Err(err) => return Err(err.to_string()),
                }
            }
            if read.kept.len() as u64 >= limit && !read.more {
                read.requests += 1;
                read.more = stream
                    .get_first_raw_message_by_subject(subject, next_seq)
                    .await
                    .is_ok();
            }
        }
        Ok(read)
    }

    /// The messages mirrored for `upgrade`, in stream order, as
    /// [`super::kept`] keeps them ([`read_subject`]: a few round trips, not
    /// one per message); past `limit` messages, the rest is not read and a
    /// string saying so ends the list.
    pub(crate) async fn of_upgrade(
        shared: &Shared,
        upgrade: &str,
        limit: u64,
    ) -> Result<Vec<serde_json::Value>, ServiceError> {
        let nats = |err: String| ServiceError::Nats(format!("reading BATON_EVENTS: {err}"));
        let subject = protocol::subjects::event(upgrade);
        let read = read_subject(&shared.events, &subject, limit, |_, _, payload| {
            super::kept(upgrade, payload)
        })
        .await
        .map_err(nats)?;
        let mut out = read.kept;
        if read.more {
            out.push(serde_json::Value::String(format!(
                "more than {limit} messages on {subject}; the rest were not read"
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: u8) -> StreamId {
        StreamId([n; 16])
    }

    fn message(upgrade: StreamId, seq: u64, hash: [u8; 32]) -> serde_json::Value {
        serde_json::json!({"upgrade": upgrade.to_string(), "seq": seq, "hash": hex::encode(hash), "event": {}})
    }

    /// A log of one upgrade with three events, hashes [1;32], [2;32], [3;32].
    fn lookup(s: StreamId, seq: u64) -> Result<At, String> {
        match (s == stream(1), seq) {
            (true, 1..=3) => Ok(At::Hash([seq as u8; 32])),
            (true, _) => Ok(At::Missing),
            (false, _) => Ok(At::NotHere),
        }
    }

    #[test]
    fn the_start_check_keeps_three_fields_and_calls_a_foreign_or_broken_message_malformed() {
        let u1 = stream(1).to_string();
        let big = serde_json::json!({
            "upgrade": u1, "seq": 1, "hash": hex::encode([1u8; 32]), "event": {"pad": "x".repeat(100_000)},
        });
        let kept_big = kept(&u1, big.to_string().as_bytes());
        assert!(kept_big.to_string().len() < 200, "{kept_big}");
        assert_eq!(differences(vec![kept_big], lookup, |_| false), vec![]);

        // seq 1 of upgrade 1, correct, but published on upgrade 3's subject.
        let elsewhere = message(stream(1), 1, [1; 32]).to_string();
        let foreign = kept(&stream(3).to_string(), elsewhere.as_bytes());
        let found = differences(vec![foreign], lookup, |_| true);
        assert!(
            matches!(&found[..], [Difference::Malformed { message }] if message.contains("not an event of it")),
            "{found:?}"
        );
        let broken = kept(&u1, &[b'{'; 5_000]);
        let found = differences(vec![broken], lookup, |_| true);
        assert!(
            matches!(&found[..], [Difference::Malformed { message }] if message.contains("not JSON") && message.len() < 300),
            "{found:?}"
        );
    }

    #[test]
    fn a_hash_that_is_not_64_hex_digits_is_quoted_as_malformed_not_repeated_whole() {
        let long = serde_json::json!({"upgrade": stream(1).to_string(), "seq": 1, "hash": "f".repeat(100_000)});
        let found = differences(vec![long], lookup, |_| false);
        assert!(
            matches!(&found[..], [Difference::Malformed { .. }]),
            "{found:?}"
        );
        assert!(found[0].to_string().len() < 300, "{}", found[0]);
    }

    #[test]
    fn a_faithful_mirror_has_no_difference() {
        let mirror = (1..=3).map(|seq| message(stream(1), seq, [seq as u8; 32]));
        assert_eq!(differences(mirror, lookup, |_| true), vec![]);
    }

    #[test]
    fn every_kind_of_difference_is_named_and_only_a_gap_is_not_a_contradiction() {
        let mirror = vec![
            message(stream(1), 1, [1; 32]),
            message(stream(1), 2, [9; 32]),
            message(stream(1), 7, [7; 32]),
            message(stream(2), 1, [1; 32]),
            serde_json::json!({"upgrade": "nope"}),
        ];
        let found = differences(mirror, lookup, |_| true);
        let text: Vec<String> = found.iter().map(|d| d.to_string()).collect();
        let u1 = stream(1).to_string();
        let u2 = stream(2).to_string();
        assert_eq!(
            text,
            vec![
                format!(
                    "upgrade {u1} seq 2: the mirror has hash {}, the log {}",
                    hex::encode([9u8; 32]),
                    hex::encode([2u8; 32])
                ),
                format!("upgrade {u1} seq 7: mirrored, but not in the log"),
                format!("upgrade {u2} seq 1: mirrored, but not in the log"),
                r#"a mirrored message is malformed: {"upgrade":"nope"}"#.to_string(),
                format!("upgrade {u1} seq 3: in the log, not in the mirror"),
            ]
        );
        let contradictions: Vec<bool> = found.iter().map(Difference::contradicts).collect();
        assert_eq!(contradictions, vec![true, true, true, true, false]);
    }

    #[test]
    fn a_running_upgrades_tail_past_its_mirror_is_not_a_difference_yet_but_a_gap_is() {
        let tail = vec![
            message(stream(1), 1, [1; 32]),
            message(stream(1), 2, [2; 32]),
        ];
        assert_eq!(differences(tail.clone(), lookup, |_| false), vec![]);
        assert_eq!(
            differences(tail, lookup, |_| true),
            vec![Difference::NotMirrored {
                upgrade: stream(1).to_string(),
                seq: 3
            }]
        );
        let gap = vec![
            message(stream(1), 1, [1; 32]),
            message(stream(1), 3, [3; 32]),
        ];
        assert_eq!(
            differences(gap, lookup, |_| false),
            vec![Difference::NotMirrored {
                upgrade: stream(1).to_string(),
                seq: 2
            }]
        );
    }
}
