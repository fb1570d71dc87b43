//! Streams as JSON lines: export, import into another log, and offline verification of an exported file.
//!
//! One line per record, in seq order:
//!
//! ```text
//! {"stream":"01JD...","seq":1,"prev":"00...00","hash":"9f...","msg_id":"u:s:1","event":{"type":"Submitted"}}
//! ```
//!
//! - `stream`: the ULID string; `seq`: from 1; `prev`, `hash`: 64 lowercase hex digits (see [`crate::chain_hash`]).
//! - `msg_id`: present only when the record has one.
//! - The record's bytes, in exactly one of three fields:
//!   - `event`: the bytes are a JSON value written verbatim (valid UTF-8 JSON, on one line, without surrounding
//!     whitespace), so the workflow's JSON events stay readable and byte-exact;
//!   - `text`: any other UTF-8, as a JSON string;
//!   - `hex`: anything else, as lowercase hex.
//!
//! Global positions are not exported: they belong to one log; an import assigns new ones. An export proves the
//! chain is intact from seq 1 to its last line; that the last line is the real head must be checked against an
//! anchor kept elsewhere (the published events), since a file cut short is still a valid chain.

use crate::error::StoreError;
use crate::hash::{chain_hash, ZERO_HASH};
use crate::layout;
use crate::types::{Hash, Head, NewRecord, StreamId};
use crate::Store;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};

/// What an export holds: each stream with its last seq and hash (to compare with an anchor), and the number of
/// records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportReport {
    pub streams: Vec<(StreamId, Head)>,
    pub records: u64,
}

#[derive(Serialize)]
struct LineOut<'a> {
    stream: String,
    seq: u64,
    prev: String,
    hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
}

/// One parsed line of an export.
struct LineIn {
    line: usize,
    stream: StreamId,
    seq: u64,
    prev: Hash,
    hash: Hash,
    msg_id: Option<String>,
    bytes: Vec<u8>,
}

impl Store {
    /// Writes the committed records of `stream` to `out` as JSON lines (format in this module's docs) and
    /// returns how many it wrote.
    pub fn export_jsonl(&self, stream: StreamId, out: impl Write) -> Result<u64, StoreError> {
        let mut out = std::io::BufWriter::new(out);
        let mut n = 0;
        for r in self.read(stream, 1)? {
            let r = r?;
            let event = as_json_event(&r.bytes);
            let text = match event {
                Some(_) => None,
                None => std::str::from_utf8(&r.bytes).ok(),
            };
            let line = LineOut {
                stream: stream.to_string(),
                seq: r.seq,
                prev: hex::encode(r.prev_hash),
                hash: hex::encode(r.hash),
                msg_id: r.msg_id.as_deref(),
                event,
                text,
                hex: (event.is_none() && text.is_none()).then(|| hex::encode(&r.bytes)),
            };
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        out.flush()?;
        Ok(n)
    }

    /// Imports an export (one or several streams) after verifying it with [`verify_export`]. The streams must
    /// not exist in this log and no message id may already be in it. Records get new global positions in file
    /// order; seqs and hashes are kept (and checked). Flushes before returning. Everything is checked before
    /// the first write; a storage failure part-way leaves the chunks (of at most 1024 records) written so far.
    pub fn import_jsonl(&self, input: impl BufRead) -> Result<ExportReport, StoreError> {
        let (lines, report) = parse_and_verify(input)?;
        for (stream, _) in &report.streams {
            if self.head(*stream)?.is_some()
                || self
                    .tree
                    .scan_prefix(layout::prefixed(layout::RECORDS, stream.as_bytes()))
                    .next()
                    .is_some()
            {
                return Err(StoreError::StreamExists { stream: *stream });
            }
        }
        for l in &lines {
            if let Some(id) = &l.msg_id {
                if self.tree.contains_key(layout::dedupe_entry_key(id))? {
                    return Err(StoreError::InvalidExport {
                        line: l.line,
                        field: "msg_id".into(),
                        reason: format!("message id {id:?} is already in this log"),
                    });
                }
            }
        }
        // Consecutive lines of one stream go in one append (at most 1024 records each).
        let mut i = 0;
        while i < lines.len() {
            let stream = lines[i].stream;
            let mut j = i;
            while j < lines.len() && j - i < 1024 && lines[j].stream == stream {
                j += 1;
            }
            let chunk = &lines[i..j];
            let batch: Vec<NewRecord> = chunk
                .iter()
                .map(|l| NewRecord {
                    msg_id: l.msg_id.clone(),
                    bytes: l.bytes.clone(),
                })
                .collect();
            let outcome = self.append(stream, chunk[0].seq - 1, &batch)?;
            for (l, r) in chunk.iter().zip(&outcome.records) {
                if r.duplicate || r.seq != l.seq || r.hash != l.hash {
                    return Err(StoreError::InvalidExport {
                        line: l.line,
                        field: "hash".into(),
                        reason: "the imported record did not reproduce the exported seq and hash"
                            .into(),
                    });
                }
            }
            i = j;
        }
        self.flush()?;
        Ok(report)
    }
}

/// Verifies an exported file offline: every line well-formed, every stream starting at seq 1 with consecutive
/// seqs, each `prev` equal to the previous line's `hash`, each `hash` recomputed from the bytes, message ids
/// unique. Returns each stream's last seq and hash, to compare with an anchor kept elsewhere.
pub fn verify_export(input: impl BufRead) -> Result<ExportReport, StoreError> {
    parse_and_verify(input).map(|(_, report)| report)
}

fn parse_and_verify(input: impl BufRead) -> Result<(Vec<LineIn>, ExportReport), StoreError> {
    let mut heads: BTreeMap<StreamId, Head> = BTreeMap::new();
    let mut msg_ids: HashSet<String> = HashSet::new();
    let mut lines = Vec::new();
    for (i, text) in input.lines().enumerate() {
        let number = i + 1;
        // A line that is not UTF-8 is named like any other malformed line (found by tests/fuzz_export.rs).
        let text = text.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => invalid(number, "(line)", format!("not UTF-8: {e}")),
            _ => e.into(),
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let l = parse_line(number, &text)?;
        let (want_seq, want_prev) = heads
            .get(&l.stream)
            .map_or((1, ZERO_HASH), |h| (h.seq + 1, h.hash));
        if l.seq != want_seq {
            return Err(StoreError::corrupt(
                l.stream,
                want_seq,
                format!(
                    "line {number}: seq {} found where seq {want_seq} was expected",
                    l.seq
                ),
            ));
        }
        if l.prev != want_prev {
            return Err(StoreError::corrupt(
                l.stream,
                l.seq,
                format!("line {number}: prev does not match the previous record's hash"),
            ));
        }
        if chain_hash(&l.stream, l.seq, &l.prev, &l.bytes) != l.hash {
            return Err(StoreError::corrupt(
                l.stream,
                l.seq,
                format!("line {number}: hash does not match the record's contents"),
            ));
        }
        if let Some(id) = &l.msg_id {
            if !msg_ids.insert(id.clone()) {
                return Err(invalid(
                    number,
                    "msg_id",
                    format!("message id {id:?} appears twice"),
                ));
            }
        }
        heads.insert(
            l.stream,
            Head {
                seq: l.seq,
                hash: l.hash,
            },
        );
        lines.push(l);
    }
    let report = ExportReport {
        streams: heads.into_iter().collect(),
        records: lines.len() as u64,
    };
    Ok((lines, report))
}

fn invalid(line: usize, field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidExport {
        line,
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse_line(line: usize, text: &str) -> Result<LineIn, StoreError> {
    // Ordered, so that of several unknown fields the same one is named every time (a HashMap named a
    // different one per parse: found by the 1,000,000-input fuzz run).
    let mut fields: BTreeMap<String, &RawValue> = serde_json::from_str(text)
        .map_err(|e| invalid(line, "(line)", format!("not a JSON object: {e}")))?;
    let mut take = |name: &str| fields.remove(name);

    let stream: String = required(line, "stream", take("stream"))?;
    let stream: StreamId = stream
        .parse()
        .map_err(|e| invalid(line, "stream", format!("not a ULID: {e}")))?;
    let seq: u64 = required(line, "seq", take("seq"))?;
    let prev = hash_field(line, "prev", take("prev"))?;
    let hash = hash_field(line, "hash", take("hash"))?;
    let msg_id: Option<String> = match take("msg_id") {
        None => None,
        Some(raw) => Some(required(line, "msg_id", Some(raw))?),
    };
    let bytes = match (take("event"), take("text"), take("hex")) {
        (Some(raw), None, None) => raw.get().as_bytes().to_vec(),
        (None, Some(raw), None) => required::<String>(line, "text", Some(raw))?.into_bytes(),
        (None, None, Some(raw)) => hex::decode(required::<String>(line, "hex", Some(raw))?)
            .map_err(|e| invalid(line, "hex", format!("not hex: {e}")))?,
        _ => {
            return Err(invalid(
                line,
                "event",
                "exactly one of `event`, `text` and `hex` is required",
            ))
        }
    };
    if let Some(extra) = fields.keys().next() {
        return Err(invalid(line, extra, "unknown field"));
    }
    Ok(LineIn {
        line,
        stream,
        seq,
        prev,
        hash,
        msg_id,
        bytes,
    })
}

fn required<T: serde::de::DeserializeOwned>(
    line: usize,
    field: &str,
    raw: Option<&RawValue>,
) -> Result<T, StoreError> {
    let raw = raw.ok_or_else(|| invalid(line, field, "missing"))?;
    serde_json::from_str(raw.get()).map_err(|e| invalid(line, field, e.to_string()))
}

fn hash_field(line: usize, field: &str, raw: Option<&RawValue>) -> Result<Hash, StoreError> {
    let s: String = required(line, field, raw)?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(&s, &mut h)
        .map_err(|e| invalid(line, field, format!("not 64 hex digits: {e}")))?;
    Ok(h)
}

/// The bytes as a JSON value to embed verbatim, when that reproduces them exactly on import.
fn as_json_event(bytes: &[u8]) -> Option<&RawValue> {
    let s = std::str::from_utf8(bytes).ok()?;
    if s.is_empty() || s.trim() != s || s.contains(['\n', '\r']) {
        return None;
    }
    serde_json::from_str::<&RawValue>(s).ok()
}
