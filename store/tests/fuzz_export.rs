//! Fuzzing the export importer (issue 12): `verify_export` and `import_jsonl` on arbitrary bytes and on real
//! exports edited line by line (lines dropped, duplicated, swapped; structure-aware edits inside a line with
//! boundary numbers favoured; byte edits), and on edited exports whose hash chain is then recomputed, so that
//! imports get past verification and write. Nothing may panic; an import refuses exactly what verification
//! refuses; errors name the line. `BATON_FUZZ_CASES` sets the inputs (10,000 unless set).

#[path = "../../tests/fuzz/support.rs"]
mod support;

use proptest::prelude::*;
use store::{chain_hash, verify_export, NewRecord, Store, StoreError, StreamId, ZERO_HASH};
use support::{bytes, fuzz, Bytes};

/// A real export (its JSON events in serde_json's canonical form, so that lines survive a trip through
/// `serde_json::Value`): two streams, records of every encoding (JSON event, text, hex), with and without msg ids.
fn export() -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let records = |tag: &str| {
        vec![
            NewRecord::with_msg_id(
                format!("{tag}:1:1"),
                br#"{"n":1,"type":"Submitted"}"#.to_vec(),
            ),
            NewRecord::new(b"plain text".to_vec()),
            NewRecord::new(b"\xff\x00binary".to_vec()),
            NewRecord::with_msg_id(
                format!("{tag}:2:1"),
                br#"{"now_ms":5,"type":"Tick"}"#.to_vec(),
            ),
        ]
    };
    let mut out = Vec::new();
    for (i, tag) in ["a", "b"].into_iter().enumerate() {
        let s = StreamId([i as u8 + 1; 16]);
        store.append(s, 0, &records(tag)).unwrap();
        let mut text = Vec::new();
        store.export_jsonl(s, &mut text).unwrap();
        for line in String::from_utf8(text).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

#[derive(Clone, Debug)]
enum LineEdit {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Json(usize, support::Edit),
    Bytes(usize, usize, u8, u8),
}

/// An edited export, and whether to recompute its hash chain afterwards (into a fresh stream id).
#[derive(Clone, Debug)]
struct Edited {
    edits: Vec<LineEdit>,
    rechain: Option<u128>,
}

fn edited() -> impl Strategy<Value = Edited> {
    let edit = prop_oneof![
        1 => any::<usize>().prop_map(LineEdit::Drop),
        1 => any::<usize>().prop_map(LineEdit::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        5 => (any::<usize>(), support::edit()).prop_map(|(i, e)| LineEdit::Json(i, e)),
        2 => (any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>())
            .prop_map(|(i, a, k, b)| LineEdit::Bytes(i, a, k, b)),
    ];
    (
        proptest::collection::vec(edit, 0..6),
        proptest::option::of(any::<u128>()),
    )
        .prop_map(|(edits, rechain)| Edited { edits, rechain })
}

/// The lines of the edited export.
fn render(valid: &[serde_json::Value], e: &Edited) -> Vec<u8> {
    let mut values = valid.to_vec();
    for edit in &e.edits {
        let n = values.len().max(1);
        match edit {
            LineEdit::Drop(i) if !values.is_empty() => {
                values.remove(i % n);
            }
            LineEdit::Duplicate(i) if !values.is_empty() => {
                let v = values[i % n].clone();
                values.insert(i % n, v);
            }
            LineEdit::Swap(a, b) if !values.is_empty() => values.swap(a % n, b % n),
            LineEdit::Json(i, edit) if !values.is_empty() => {
                support::apply(&mut values[i % n], edit)
            }
            _ => {}
        }
    }
    if let Some(id) = e.rechain {
        rechain(&mut values, StreamId(id.to_be_bytes()));
    }
    let mut lines: Vec<Vec<u8>> = values
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect();
    for edit in &e.edits {
        if let LineEdit::Bytes(i, at, kind, byte) = edit {
            if !lines.is_empty() {
                let n = lines.len();
                support::byte_edit(&mut lines[i % n], *at, *kind, *byte);
            }
        }
    }
    lines.join(&b'\n')
}

/// Moves every line into `stream` and recomputes seqs and the hash chain from each line's bytes, leaving
/// everything else as edited.
fn rechain(values: &mut [serde_json::Value], stream: StreamId) {
    let mut prev = ZERO_HASH;
    for (i, v) in values.iter_mut().enumerate() {
        let Some(obj) = v.as_object_mut() else {
            continue;
        };
        let bytes = match (obj.get("event"), obj.get("text"), obj.get("hex")) {
            (Some(e), None, None) => serde_json::to_vec(e).unwrap(),
            (None, Some(serde_json::Value::String(t)), None) => t.clone().into_bytes(),
            (None, None, Some(serde_json::Value::String(h))) => match hex::decode(h) {
                Ok(b) => b,
                Err(_) => continue,
            },
            _ => continue,
        };
        let seq = i as u64 + 1;
        let hash = chain_hash(&stream, seq, &prev, &bytes);
        obj.insert("stream".into(), stream.to_string().into());
        obj.insert("seq".into(), seq.into());
        obj.insert("prev".into(), hex::encode(prev).into());
        obj.insert("hash".into(), hex::encode(hash).into());
        prev = hash;
    }
}

/// Where an error points: a line (or a stream and seq, for a broken chain).
fn located(e: &StoreError) -> Result<(), TestCaseError> {
    match e {
        // The field may be the empty key of an unknown field (`{"": 0}`): it is still named.
        StoreError::InvalidExport { line, .. } => prop_assert!(*line >= 1),
        StoreError::Corruption { what, .. } => prop_assert!(what.starts_with("line "), "{}", what),
        other => prop_assert!(false, "an export error that names no line: {}", other),
    }
    Ok(())
}

#[test]
fn fuzz_verify_and_import_export() {
    let valid = export();
    let whole: Vec<u8> = valid
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    assert_eq!(verify_export(&whole[..]).unwrap().records, 8);
    // Regression: a line that is not UTF-8 was an I/O error naming no line.
    let bad = verify_export(&b"\n\xff\x00"[..]).unwrap_err();
    assert!(
        matches!(bad, StoreError::InvalidExport { line: 2, .. }),
        "{bad}"
    );
    // One log for every import: a stream imported once exists afterwards, and later imports of it refuse.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let input = prop_oneof![
        1 => bytes(600),
        3 => edited().prop_map(move |e| Bytes(render(&valid, &e))),
    ];
    fuzz("verify_export + import_jsonl", input, |b| {
        let verified = verify_export(&b.0[..]);
        let imported = store.import_jsonl(&b.0[..]);
        match (&verified, &imported) {
            (Ok(v), Ok(i)) => prop_assert_eq!(v, i),
            (Err(v), Err(i)) => {
                located(v)?;
                prop_assert_eq!(v.to_string(), i.to_string());
            }
            (Ok(_), Err(StoreError::StreamExists { .. }))
            | (Ok(_), Err(StoreError::InvalidExport { .. })) => {}
            _ => prop_assert!(false, "verify {:?} but import {:?}", verified, imported),
        }
        Ok(())
    });
}
