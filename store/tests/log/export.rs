//! JSON-lines export, import into an empty log, and offline verification of exported files.

use crate::support::{small_log, stream};
use rand::{Rng, SeedableRng};
use store::{verify_export, NewRecord, Store, StoreError};

/// Bytes that exercise every encoding: JSON with odd spacing, escapes and unicode, text, binary, empty.
fn awkward_records() -> Vec<NewRecord> {
    let mut out: Vec<NewRecord> = [
        &br#"{"a" : 1,  "b":[true,null,"\u00e9\n"]}"#[..],
        br#""just a string""#,
        b"42",
        b" {\"leading\":\"space\"}",
        b"{\"trailing\":1}\n",
        b"{\"two\":\n\"lines\"}",
        "caf\u{e9} \u{1F600}".as_bytes(),
        b"",
        b"\xff\xfe\x00binary",
        br#"{"unterminated":"#,
        b"1e999",
    ]
    .iter()
    .map(|b| NewRecord::new(b.to_vec()))
    .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..50 {
        let len = rng.random_range(0..64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        out.push(NewRecord::with_msg_id(format!("random-{i}"), bytes));
    }
    out
}

#[test]
fn export_then_import_round_trips_every_byte() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    small_log(&src);
    let s = stream(9);
    src.append(s, 0, &awkward_records()).unwrap();

    let mut file = Vec::new();
    let mut exported = 0;
    for (stream, _) in src.streams().unwrap() {
        exported += src.export_jsonl(stream, &mut file).unwrap();
    }
    let text = String::from_utf8(file.clone()).unwrap();
    assert_eq!(text.lines().count() as u64, exported);
    // JSON events stay readable in the export.
    assert!(
        text.contains(r#""event":{"a" : 1,  "b":[true,null,"\u00e9\n"]}"#),
        "{text}"
    );
    assert!(text.contains(r#""hex":"fffe0062696e617279""#));

    let offline = verify_export(&file[..]).unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    let imported = dst.import_jsonl(&file[..]).unwrap();
    assert_eq!(imported, offline);
    assert_eq!(imported.streams, src.streams().unwrap());
    assert_eq!(imported.records, exported);
    assert!(dst.verify().unwrap().is_clean());
    for (stream, _) in src.streams().unwrap() {
        let a: Vec<_> = src.read(stream, 1).unwrap().map(|r| r.unwrap()).collect();
        let b: Vec<_> = dst.read(stream, 1).unwrap().map(|r| r.unwrap()).collect();
        let strip = |v: &[store::Record]| {
            v.iter()
                .map(|r| {
                    (
                        r.seq,
                        r.hash,
                        r.prev_hash,
                        r.msg_id.clone(),
                        r.bytes.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&a), strip(&b));
    }
    // Exporting the imported log gives the same file (global positions are not exported).
    let mut again = Vec::new();
    for (stream, _) in dst.streams().unwrap() {
        dst.export_jsonl(stream, &mut again).unwrap();
    }
    assert_eq!(again, file);
    // A second import of the same streams is refused.
    assert!(matches!(
        dst.import_jsonl(&file[..]),
        Err(StoreError::StreamExists { .. })
    ));
}

fn exported_small_log() -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    small_log(&store);
    let mut file = Vec::new();
    store.export_jsonl(stream(1), &mut file).unwrap();
    String::from_utf8(file).unwrap()
}

#[test]
fn verify_export_detects_edited_removed_and_reordered_lines() {
    let file = exported_small_log();
    let lines: Vec<&str> = file.lines().collect();
    assert!(lines.len() >= 4);

    let edited = file.replacen("\"n\":", "\"n\":1", 1);
    assert_ne!(edited, file);
    let mut removed = lines.clone();
    removed.remove(1);
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let without_first = lines[1..].to_vec();
    for (name, bad) in [
        ("edited", edited),
        ("removed", removed.join("\n")),
        ("swapped", swapped.join("\n")),
        ("without first", without_first.join("\n")),
    ] {
        let err = verify_export(bad.as_bytes()).unwrap_err();
        assert!(
            matches!(err, StoreError::Corruption { .. }),
            "{name}: {err:#}"
        );
    }
}

#[test]
fn a_malformed_export_names_line_and_field() {
    let file = exported_small_log();
    let second = file.lines().nth(1).unwrap();
    let bad_hash = second.replacen("\"hash\":\"", "\"hash\":\"zz", 1);
    let input = format!("{}\n{bad_hash}\n", file.lines().next().unwrap());
    match verify_export(input.as_bytes()).unwrap_err() {
        StoreError::InvalidExport { line, field, .. } => {
            assert_eq!((line, field.as_str()), (2, "hash"))
        }
        other => panic!("expected InvalidExport, got {other:#}"),
    }
    let bad_seq = file
        .lines()
        .next()
        .unwrap()
        .replacen("\"seq\":1", "\"seq\":\"one\"", 1);
    match verify_export(bad_seq.as_bytes()).unwrap_err() {
        StoreError::InvalidExport { line, field, .. } => {
            assert_eq!((line, field.as_str()), (1, "seq"))
        }
        other => panic!("expected InvalidExport, got {other:#}"),
    }
    // Of several unknown fields, the same one is named every time (the first in order).
    let extra = file
        .lines()
        .next()
        .unwrap()
        .replacen('{', r#"{"zz":1,"extra":2,"#, 1);
    for _ in 0..20 {
        match verify_export(extra.as_bytes()).unwrap_err() {
            StoreError::InvalidExport { line, field, .. } => {
                assert_eq!((line, field.as_str()), (1, "extra"))
            }
            other => panic!("expected InvalidExport, got {other:#}"),
        }
    }
    let no_bytes = r#"{"stream":"00000000000000000000000000","seq":1,"prev":"","hash":""}"#;
    assert!(matches!(
        verify_export(no_bytes.as_bytes()).unwrap_err(),
        StoreError::InvalidExport { line: 1, .. }
    ));
}
