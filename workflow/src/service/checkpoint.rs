//! Signed checkpoints: the service's signature over the head of an upgrade's
//! hash chain, so that a rewrite of the log cannot be re-sealed without the
//! service's key.
//!
//! The chain hash (`store::chain_hash`) is unkeyed: anyone who can write the
//! log can rewrite an event and recompute every later hash and the head. A
//! checkpoint pins `(stream, seq, hash)` under the service's ed25519 key.
//!
//! - **When**: after the append and flush that makes an upgrade terminal, and
//!   whenever [`EVERY`] events of a stream have been appended since its last
//!   checkpoint ([`due`]); at start, for every stream whose head is past its
//!   last checkpoint (a crash between an append and its checkpoint, or a log
//!   from before checkpoints).
//! - **Where**: a record in the service's own stream (`SERVICE_STREAM`, next
//!   to `ServiceStarted`; the upgrade streams stay pure core events), and the
//!   same JSON on `baton.checkpoint.<upgrade>` in `BATON_CHECKPOINTS`, which
//!   nobody may delete from or purge (the off-box copy).
//! - **Record**: `{"type":"Checkpoint","stream":"<upgrade id>","seq":N,
//!   "hash":"<hex chain hash of record N>","at_ms":..,"epoch":..,
//!   "key":"<service public key>","sig":"<hex>"}`.
//! - **Signed bytes**: `protocol::sign::signed_bytes(Kind::Checkpoint,
//!   "baton.checkpoint.<stream>", "", "<stream> <seq> <hash>")`, i.e.
//!   `"baton-sig/1 checkpoint <len>:baton.checkpoint.<stream> 0:\n<stream> <seq> <hash>"`
//!   with `seq` in decimal and `hash` in 64 lowercase hex digits. `at_ms`
//!   and `epoch` are informative and not signed.
//! - **Checked** ([`check`]): signed by the trust file's service key, and the
//!   chain passes through it: record `seq` of `stream` has exactly `hash`.
//!   By `baton audit verify` (offline and through the service), by the service
//!   at start (it refuses to start on a bad one), and against an exported
//!   anchor file (`--anchor`).

use std::io::BufRead;

use protocol::sign::{Identity, Kind};
use serde::{Deserialize, Serialize};
use store::{Hash, Head, Store, StreamId};

/// At most this many events of a stream are appended between two of its
/// checkpoints (plus the rest of the batch that crosses the line).
pub const EVERY: u64 = 64;

/// The `type` of a checkpoint record.
pub const RECORD_TYPE: &str = "Checkpoint";

/// One signed checkpoint, as logged, published and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Always [`RECORD_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The upgrade id (the stream's ULID).
    pub stream: String,
    pub seq: u64,
    /// Hex chain hash of record `seq` of `stream`.
    pub hash: String,
    pub at_ms: u64,
    pub epoch: u64,
    /// The signer's public key.
    pub key: String,
    /// Hex ed25519 signature (see the module docs for the signed bytes).
    pub sig: String,
}

/// The payload the signature covers (with kind and subject around it).
pub fn signed_payload(stream: &str, seq: u64, hash: &str) -> String {
    format!("{stream} {seq} {hash}")
}

/// Whether a stream whose head is at `head`, last checkpointed at
/// `checkpointed`, needs a checkpoint now.
pub fn due(head: u64, checkpointed: u64, terminal: bool) -> bool {
    head > checkpointed && (terminal || head - checkpointed >= EVERY)
}

impl Checkpoint {
    /// Signs `head` of `stream`.
    pub fn sign(
        identity: &Identity,
        stream: StreamId,
        head: Head,
        epoch: u64,
        at_ms: u64,
    ) -> Checkpoint {
        let stream = stream.to_string();
        let hash = hex::encode(head.hash);
        let sig = identity.sign(
            Kind::Checkpoint,
            &protocol::subjects::checkpoint(&stream),
            "",
            signed_payload(&stream, head.seq, &hash).as_bytes(),
        );
        Checkpoint {
            kind: RECORD_TYPE.to_string(),
            stream,
            seq: head.seq,
            hash,
            at_ms,
            epoch,
            key: identity.public_key(),
            sig,
        }
    }

    /// Reads a record of the service stream: `None` when it is not a
    /// checkpoint, an error when it claims to be one but is malformed.
    pub fn from_record(bytes: &[u8]) -> Option<Result<Checkpoint, String>> {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        if value.get("type").and_then(|t| t.as_str()) != Some(RECORD_TYPE) {
            return None;
        }
        Some(serde_json::from_value(value).map_err(|e| format!("malformed checkpoint: {e}")))
    }

    /// Checks the signature, and that `service_key` made it.
    pub fn check_signature(&self, service_key: &str) -> Result<(), String> {
        if self.key != service_key {
            return Err(format!(
                "signed by key {}, not the trust file's service key {service_key}",
                self.key
            ));
        }
        protocol::sign::verify(
            Kind::Checkpoint,
            &protocol::subjects::checkpoint(&self.stream),
            "",
            signed_payload(&self.stream, self.seq, &self.hash).as_bytes(),
            &self.key,
            &self.sig,
        )
        .map(|_| ())
    }
}

/// A checkpoint that does not hold, and why. `seq` is the checkpoint's seq
/// in `stream`, or the record's seq in the service stream when the
/// checkpoint record itself is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad checkpoint of stream {stream} at seq {seq}: {reason}")]
pub struct BadCheckpoint {
    pub stream: String,
    pub seq: u64,
    pub reason: String,
}

/// What the chain holds at a checkpoint's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The record's hash.
    Hash(Hash),
    /// The stream has no record there (cut short, or deleted).
    Missing,
    /// This source does not hold the stream (an export of other upgrades).
    NotHere,
}

/// What a check found, when every checkpoint held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Checkpoints whose position the chain passes through.
    pub checked: u64,
    /// Whether their signatures were checked (a service key was given).
    pub signatures_checked: bool,
    /// Checkpoints of streams the source does not hold (not checked).
    pub not_here: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} checkpoints on the chain", self.checked)?;
        if self.not_here > 0 {
            write!(f, ", {} of streams not held here", self.not_here)?;
        }
        if self.signatures_checked {
            write!(f, ", signed by the service key")
        } else {
            write!(
                f,
                ", signatures NOT checked (no trust file: --trust or BATON_TRUST)"
            )
        }
    }
}

/// Checks every checkpoint, in order, and stops at the first bad one: its
/// signature (when `service_key` is given), then that `hash_at` (the chain)
/// has exactly its hash at its position.
pub fn check(
    checkpoints: impl IntoIterator<Item = Result<Checkpoint, BadCheckpoint>>,
    service_key: Option<&str>,
    mut hash_at: impl FnMut(StreamId, u64) -> Result<At, String>,
) -> Result<Summary, BadCheckpoint> {
    let mut summary = Summary {
        signatures_checked: service_key.is_some(),
        ..Summary::default()
    };
    for checkpoint in checkpoints {
        let cp = checkpoint?;
        let bad = |reason: String| BadCheckpoint {
            stream: cp.stream.clone(),
            seq: cp.seq,
            reason,
        };
        let stream: StreamId = cp
            .stream
            .parse()
            .map_err(|_| bad("the stream is not an upgrade id".into()))?;
        if let Some(key) = service_key {
            cp.check_signature(key).map_err(bad)?;
        }
        match hash_at(stream, cp.seq).map_err(bad)? {
            At::NotHere => summary.not_here += 1,
            At::Missing => {
                return Err(bad(format!(
                    "the log has no record at seq {} (the stream was cut short or removed)",
                    cp.seq
                )))
            }
            At::Hash(hash) if hex::encode(hash) == cp.hash => summary.checked += 1,
            At::Hash(hash) => {
                return Err(bad(format!(
                    "the log's record there has hash {}, the signed checkpoint says {} (the chain was rewritten)",
                    hex::encode(hash),
                    cp.hash
                )))
            }
        }
    }
    Ok(summary)
}

/// The chain of a log: the hash of record `seq` of `stream` (up to its head).
pub fn hash_in(store: &Store, stream: StreamId, seq: u64) -> Result<At, String> {
    let mut records = store.read(stream, seq).map_err(|e| e.to_string())?;
    match records.next() {
        Some(Ok(record)) if record.seq == seq => Ok(At::Hash(record.hash)),
        Some(Ok(_)) | None => Ok(At::Missing),
        Some(Err(err)) => Err(err.to_string()),
    }
}

/// The checkpoints recorded in a log's service stream, in order.
pub fn in_log(
    store: &Store,
    service_stream: StreamId,
) -> Result<Vec<Result<Checkpoint, BadCheckpoint>>, store::StoreError> {
    let mut out = Vec::new();
    for record in store.read(service_stream, 1)? {
        let record = record?;
        if let Some(cp) = Checkpoint::from_record(&record.bytes) {
            out.push(cp.map_err(|reason| BadCheckpoint {
                stream: service_stream.to_string(),
                seq: record.seq,
                reason,
            }));
        }
    }
    Ok(out)
}

/// Checks every checkpoint a log records against that log's own chains.
pub fn verify_log(
    store: &Store,
    service_stream: StreamId,
    service_key: Option<&str>,
) -> Result<Summary, BadCheckpoint> {
    let checkpoints = in_log(store, service_stream).map_err(|err| BadCheckpoint {
        stream: service_stream.to_string(),
        seq: 0,
        reason: format!("cannot read the service stream: {err}"),
    })?;
    check(checkpoints, service_key, |stream, seq| {
        hash_in(store, stream, seq)
    })
}

/// Reads exported checkpoints (JSON lines, as `baton audit checkpoint
/// export` writes them). A malformed line is a bad checkpoint.
pub fn read_jsonl(input: impl BufRead) -> Vec<Result<Checkpoint, BadCheckpoint>> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let bad = |reason: String| BadCheckpoint {
            stream: "(anchor file)".into(),
            seq: i as u64 + 1,
            reason,
        };
        match line {
            Err(err) => {
                out.push(Err(bad(format!("line {}: {err}", i + 1))));
                break;
            }
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => out.push(
                Checkpoint::from_record(line.as_bytes())
                    .unwrap_or_else(|| Err("not a checkpoint".into()))
                    .map_err(|reason| bad(format!("line {}: {reason}", i + 1))),
            ),
        }
    }
    out
}

/// The service's side: signing, recording, publishing and the checks at start.
mod service {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use async_nats::jetstream;
    use store::{Head, NewRecord, StreamId};

    use super::{check, hash_in, in_log, Checkpoint};
    use crate::service::{now_ms, ServiceError, Shared, SERVICE_STREAM};

    /// Signs `head` of `stream`, appends the checkpoint to the service stream
    /// durably, then publishes it to `BATON_CHECKPOINTS`.
    pub(crate) async fn record(
        shared: &Shared,
        stream: StreamId,
        head: Head,
    ) -> Result<Checkpoint, ServiceError> {
        let cp = Checkpoint::sign(&shared.identity, stream, head, shared.epoch, now_ms());
        let bytes = serde_json::to_vec(&cp).expect("a checkpoint always serialises");
        append_service(shared, vec![NewRecord::new(bytes)], &cp.stream).await?;
        tracing::info!(upgrade = %cp.stream, seq = cp.seq, hash = %cp.hash, "checkpoint signed");
        publish(shared, &cp, None).await?;
        Ok(cp)
    }

    /// Appends `records` to the service stream after its head. Upgrade loops checkpoint concurrently: one writer
    /// of the service stream at a time, behind the append gate. A store error fails closed, naming `upgrade`.
    async fn append_service(
        shared: &Shared,
        records: Vec<NewRecord>,
        upgrade: impl std::fmt::Display,
    ) -> Result<(), ServiceError> {
        let fail_closed = |err| match err {
            ServiceError::Store(source) => ServiceError::FailClosed {
                upgrade: upgrade.to_string(),
                source,
            },
            other => other,
        };
        let _writer = shared.service_log.lock().await;
        let _gate = shared.append_gate.read().await;
        let at = shared
            .store
            .head(SERVICE_STREAM)
            .map_err(|e| fail_closed(e.into()))?
            .map_or(0, |h| h.seq);
        shared
            .committer
            .append(SERVICE_STREAM, at, records)
            .await
            .map_err(fail_closed)?;
        Ok(())
    }

    /// Publishes a checkpoint to `BATON_CHECKPOINTS`, retrying while NATS is
    /// away; gives up on shutdown (the next start re-publishes what the
    /// stream lacks) and, with a `patience` (at start), once its tries have
    /// failed that long ([`ServiceError::PublishGaveUp`]).
    pub(crate) async fn publish(
        shared: &Shared,
        cp: &Checkpoint,
        patience: Option<std::time::Duration>,
    ) -> Result<(), ServiceError> {
        let (subject, headers, payload) = message(cp);
        let what = format!("checkpoint at seq {}", cp.seq);
        crate::service::publish_patiently(
            shared, &cp.stream, subject, headers, payload, &what, patience,
        )
        .await
    }

    /// The most checkpoints one append of [`record_all`] carries.
    const RECORD_BATCH: usize = 256;

    /// [`record`] for many heads at once: signs them all, appends them to the
    /// service stream in batches of [`RECORD_BATCH`] (one flush each, not one
    /// per checkpoint), then publishes them pipelined ([`publish_all`]).
    pub(crate) async fn record_all(
        shared: &Shared,
        heads: &[(StreamId, Head)],
    ) -> Result<Vec<Checkpoint>, ServiceError> {
        let checkpoints: Vec<Checkpoint> = heads
            .iter()
            .map(|(stream, head)| {
                Checkpoint::sign(&shared.identity, *stream, *head, shared.epoch, now_ms())
            })
            .collect();
        for batch in checkpoints.chunks(RECORD_BATCH) {
            let records: Vec<NewRecord> = batch
                .iter()
                .map(|cp| {
                    NewRecord::new(serde_json::to_vec(cp).expect("a checkpoint always serialises"))
                })
                .collect();
            append_service(shared, records, SERVICE_STREAM).await?;
        }
        for cp in &checkpoints {
            tracing::info!(upgrade = %cp.stream, seq = cp.seq, hash = %cp.hash, "checkpoint signed");
        }
        publish_all(shared, &checkpoints).await?;
        Ok(checkpoints)
    }

    /// [`publish`] for many checkpoints at start, pipelined: every publish sent, then
    /// the acks awaited; one whose publish or ack failed goes again through
    /// [`publish`] (its message id dedupes a copy that landed), for at most
    /// `Config::recovery_patience`. Stops at once on shutdown (each ack left
    /// would otherwise be waited on for its timeout).
    pub(crate) async fn publish_all(
        shared: &Shared,
        checkpoints: &[Checkpoint],
    ) -> Result<(), ServiceError> {
        for batch in checkpoints.chunks(RECORD_BATCH) {
            if shared.shutdown.is_cancelled() {
                return Ok(());
            }
            let mut acks = Vec::with_capacity(batch.len());
            for cp in batch {
                let (subject, headers, payload) = message(cp);
                let sent = shared
                    .js
                    .publish_with_headers(subject, headers, payload.into())
                    .await;
                acks.push(sent.ok());
            }
            for (cp, ack) in batch.iter().zip(acks) {
                let acked = match ack {
                    Some(ack) => tokio::select! {
                        _ = shared.shutdown.cancelled() => return Ok(()),
                        acked = ack => acked.is_ok(),
                    },
                    None => false,
                };
                if !acked {
                    publish(shared, cp, Some(shared.recovery_patience)).await?;
                }
            }
        }
        Ok(())
    }

    /// A checkpoint's subject, headers (its message id) and body.
    fn message(cp: &Checkpoint) -> (String, async_nats::HeaderMap, Vec<u8>) {
        let subject = protocol::subjects::checkpoint(&cp.stream);
        let payload = serde_json::to_vec(cp).expect("a checkpoint always serialises");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            protocol::messages::MSG_ID_HEADER,
            format!("{}:checkpoint:{}", cp.stream, cp.seq).as_str(),
        );
        (subject, headers, payload)
    }

    /// Every checkpoint in `BATON_CHECKPOINTS`, in order. Messages not signed
    /// by the service key are skipped with a warning (only the service may
    /// publish there; a forgery must not be able to stop it for good).
    pub(crate) async fn detached(
        shared: &Shared,
        stream: &jetstream::stream::Stream,
    ) -> Result<Vec<Checkpoint>, ServiceError> {
        // One paged read of the whole stream (`mirror::read_subject`), not one
        // get per checkpoint: the stream keeps every checkpoint ever signed.
        let read = crate::service::mirror::read_subject(
            stream,
            protocol::subjects::CHECKPOINTS_WILDCARD,
            u64::MAX,
            |seq, subject, payload| match Checkpoint::from_record(payload) {
                Some(Ok(cp)) if cp.check_signature(&shared.trust.service.key).is_ok() => Some(cp),
                _ => {
                    tracing::warn!(
                        stream_seq = seq,
                        %subject,
                        "BATON_CHECKPOINTS holds a message that is not a checkpoint signed by the service key; ignored"
                    );
                    None
                }
            },
        )
        .await
        .map_err(|err| ServiceError::Nats(format!("reading BATON_CHECKPOINTS: {err}")))?;
        Ok(read.kept.into_iter().flatten().collect())
    }

    /// At start, before any upgrade is acted on: every checkpoint in
    /// `BATON_CHECKPOINTS` must be on the log's chain (the service refuses to
    /// start otherwise); the log's checkpoints the stream lacks are
    /// re-published; and every upgrade stream whose head is past its last
    /// checkpoint gets one.
    ///
    /// Answers the seq of each upgrade stream's last checkpoint (its head
    /// now), so recovery need not read the service stream again per upgrade.
    pub(crate) async fn reconcile(
        shared: &Arc<Shared>,
        stream: &jetstream::stream::Stream,
    ) -> Result<BTreeMap<StreamId, u64>, ServiceError> {
        let off_box = detached(shared, stream).await?;
        let summary = check(off_box.iter().cloned().map(Ok), None, |s, q| {
            hash_in(&shared.store, s, q)
        })
        .map_err(|bad| {
            ServiceError::BadCheckpoint(format!("BATON_CHECKPOINTS disagrees with the log: {bad}"))
        })?;
        let published: std::collections::BTreeSet<(String, u64)> = off_box
            .iter()
            .map(|cp| (cp.stream.clone(), cp.seq))
            .collect();
        let mut last: BTreeMap<String, u64> = Default::default();
        let mut unpublished = Vec::new();
        for cp in in_log(&shared.store, SERVICE_STREAM)?.into_iter().flatten() {
            let seq = last.entry(cp.stream.clone()).or_default();
            *seq = (*seq).max(cp.seq);
            if !published.contains(&(cp.stream.clone(), cp.seq)) {
                unpublished.push(cp);
            }
        }
        publish_all(shared, &unpublished).await?;
        let mut checkpointed = BTreeMap::new();
        let mut due = Vec::new();
        for (stream, head) in shared.store.streams()? {
            if stream == SERVICE_STREAM {
                continue;
            }
            let seq = last.get(&stream.to_string()).copied().unwrap_or(0);
            if seq < head.seq {
                due.push((stream, head));
            }
            checkpointed.insert(stream, seq.max(head.seq));
        }
        record_all(shared, &due).await?;
        tracing::info!(
            anchored = summary.checked,
            off_box = off_box.len(),
            republished = unpublished.len(),
            recorded = due.len(),
            "the log agrees with BATON_CHECKPOINTS"
        );
        Ok(checkpointed)
    }
}

pub(crate) use service::{reconcile, record};

#[cfg(test)]
mod tests {
    use super::*;
    use store::NewRecord;

    const SERVICE: StreamId = StreamId([0; 16]);

    fn log_with_events(n: u64) -> (tempfile::TempDir, Store, StreamId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let stream: StreamId = ulid::Ulid::new().into();
        let records: Vec<NewRecord> = (0..n)
            .map(|i| NewRecord::new(format!("{{\"n\":{i}}}")))
            .collect();
        store.append(stream, 0, &records).unwrap();
        (dir, store, stream)
    }

    fn record(store: &Store, cp: &Checkpoint) {
        let head = store.head(SERVICE).unwrap().map_or(0, |h| h.seq);
        let bytes = serde_json::to_vec(cp).unwrap();
        store
            .append(SERVICE, head, &[NewRecord::new(bytes)])
            .unwrap();
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_to_it_does_not() {
        let (_dir, store, stream) = log_with_events(5);
        let id = Identity::generate();
        let head = store.head(stream).unwrap().unwrap();
        let cp = Checkpoint::sign(&id, stream, head, 1, 7);
        assert_eq!(cp.check_signature(&id.public_key()), Ok(()));
        let json = serde_json::to_string(&cp).unwrap();
        assert!(json.starts_with("{\"type\":\"Checkpoint\""), "{json}");
        assert_eq!(
            Checkpoint::from_record(json.as_bytes()),
            Some(Ok(cp.clone()))
        );
        assert_eq!(
            Checkpoint::from_record(br#"{"type":"ServiceStarted"}"#),
            None
        );

        let other = Identity::generate().public_key();
        assert!(cp
            .check_signature(&other)
            .unwrap_err()
            .contains("not the trust file's"));
        for altered in [
            Checkpoint {
                seq: 4,
                ..cp.clone()
            },
            Checkpoint {
                hash: "00".repeat(32),
                ..cp.clone()
            },
            Checkpoint {
                stream: ulid::Ulid::new().to_string(),
                ..cp.clone()
            },
        ] {
            let err = altered.check_signature(&id.public_key()).unwrap_err();
            assert!(err.contains("bad signature"), "{err}");
        }
    }

    #[test]
    fn checkpoints_hold_on_the_untouched_chain_and_name_a_rewrite() {
        let (dir, store, stream) = log_with_events(5);
        let id = Identity::generate();
        let key = id.public_key();
        let at3 = Head {
            seq: 3,
            hash: store.read(stream, 3).unwrap().next().unwrap().unwrap().hash,
        };
        let head = store.head(stream).unwrap().unwrap();
        record(&store, &Checkpoint::sign(&id, stream, at3, 1, 1));
        record(&store, &Checkpoint::sign(&id, stream, head, 1, 2));
        let summary = verify_log(&store, SERVICE, Some(&key)).unwrap();
        assert_eq!(summary.checked, 2);
        assert!(summary.to_string().contains("signed by the service key"));
        let unsigned = verify_log(&store, SERVICE, None).unwrap();
        assert!(unsigned.to_string().contains("NOT checked"), "{unsigned}");

        // Rewrite record 2 and re-seal the chain and its head, without the key.
        drop(store);
        {
            let raw = sled::open(dir.path().join("db")).unwrap();
            let log = store::layout::open_tree(&raw).unwrap();
            let mut prev = store::ZERO_HASH;
            for seq in 1..=5u64 {
                let k = store::layout::record_entry_key(&stream, seq);
                let mut v = store::layout::decode_record(&log.get(k).unwrap().unwrap()).unwrap();
                if seq == 2 {
                    v.bytes = b"{\"n\":99}".to_vec();
                }
                let hash = store::chain_hash(&stream, seq, &prev, &v.bytes);
                log.insert(
                    k,
                    store::layout::encode_record(
                        &hash,
                        &prev,
                        v.global_pos,
                        v.msg_id.as_deref(),
                        &v.bytes,
                    ),
                )
                .unwrap();
                prev = hash;
            }
            log.insert(
                store::layout::head_entry_key(&stream),
                &store::layout::encode_head(&Head { seq: 5, hash: prev })[..],
            )
            .unwrap();
            raw.flush().unwrap();
        }
        let store = Store::open(dir.path().join("db")).unwrap();
        assert!(
            store.verify().unwrap().is_clean(),
            "the re-sealed chain verifies alone"
        );
        let bad = verify_log(&store, SERVICE, Some(&key)).unwrap_err();
        assert_eq!(
            (bad.stream.as_str(), bad.seq),
            (stream.to_string().as_str(), 3)
        );
        assert!(bad.reason.contains("rewritten"), "{bad}");
        // A forged checkpoint of the new chain is refused by its signature.
        let forger = Identity::generate();
        let forged = Checkpoint::sign(&forger, stream, store.head(stream).unwrap().unwrap(), 1, 3);
        let bad = check([Ok(forged)], Some(&key), |s, q| hash_in(&store, s, q)).unwrap_err();
        assert!(
            bad.reason.contains("not the trust file's service key"),
            "{bad}"
        );
    }

    #[test]
    fn a_checkpoint_beyond_the_head_is_a_cut_log_and_anchor_lines_parse() {
        let (_dir, store, stream) = log_with_events(2);
        let id = Identity::generate();
        let cp = Checkpoint::sign(
            &id,
            stream,
            Head {
                seq: 9,
                hash: [1; 32],
            },
            1,
            1,
        );
        let bad = check([Ok(cp.clone())], Some(&id.public_key()), |s, q| {
            hash_in(&store, s, q)
        })
        .unwrap_err();
        assert!(bad.reason.contains("no record at seq 9"), "{bad}");
        let text = format!("{}\n\nnot json\n", serde_json::to_string(&cp).unwrap());
        let read = read_jsonl(text.as_bytes());
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], Ok(cp));
        assert!(read[1].as_ref().unwrap_err().reason.contains("line 3"));
    }

    #[test]
    fn checkpoints_are_due_at_the_end_and_every_64_events() {
        assert!(!due(0, 0, true));
        assert!(!due(63, 0, false));
        assert!(due(64, 0, false));
        assert!(due(70, 0, false));
        assert!(!due(127, 64, false));
        assert!(due(65, 64, true));
        assert!(!due(64, 64, true));
    }
}
