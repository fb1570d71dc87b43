//! Fuzzing the protocol's decoders of untrusted bytes (issue 12): step requests and results, the ids peeked
//! from a malformed request, presence records (plain and sealed), signed envelopes, signature headers, the
//! trust file and NATS URLs. Each gets arbitrary bytes and mutations of valid inputs; none may panic, a
//! decode of an encode round-trips, and errors name the field (or the line, for the trust file).
//! `BATON_FUZZ_CASES` sets the inputs per decoder (10,000 unless set); `tests/FUZZ.md` has the figures.

#[path = "../../tests/fuzz/support.rs"]
mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use protocol::messages::{decode_request, decode_result, RequestIds, StepRequest, StepResult};
use protocol::sign::{Envelope, Identity, Kind, Trust};
use protocol::{presence, Outcome, Presence};
use support::{bytes, fuzz, mutated_json, mutated_text, Bytes};

fn request() -> StepRequest {
    StepRequest {
        v: 1,
        upgrade: "01JB0000000000000000000000".into(),
        step: 7,
        attempt: 1,
        epoch: 3,
        node: "backend-1".into(),
        group: "backend-1".into(),
        action: "status".into(),
        argv: vec!["chef-backend-ctl".into(), "status".into()],
        env: BTreeMap::from([("A".into(), "b".into())]),
        timeout_ms: 5000,
        deadline_ms: 1_900_000_000_000,
        profile_sha256: None,
    }
}

fn result() -> StepResult {
    request().ids().rejected("stale epoch", "exec-1")
}

fn presence_record() -> Presence {
    Presence {
        v: 1,
        id: "exec-1".into(),
        group: "g1".into(),
        nodes: vec!["backend-1".into()],
        version: "0.1.0".into(),
        host: "h".into(),
        pid: 42,
        started_ms: 1,
        heartbeat_ms: 2,
        executed: 3,
        rejected: 4,
        not_allowed: 5,
        conflicts: 6,
        malformed: 7,
        unsigned: 8,
        running: Some("u:1:1".into()),
        profile: Some(protocol::presence::ServedProfile {
            name: "etcd".into(),
            sha256: Some("ab".repeat(32)),
        }),
    }
}

/// Either arbitrary bytes or a mutation of one of `valid`.
fn input(valid: Vec<serde_json::Value>) -> impl Strategy<Value = Bytes> {
    prop_oneof![bytes(512), mutated_json(valid)]
}

fn json<T: serde::Serialize>(t: &T) -> serde_json::Value {
    serde_json::to_value(t).unwrap()
}

/// A decode error names a field of the message, or `(message)` for the whole body.
fn names_a_field(field: &str) -> Result<(), TestCaseError> {
    prop_assert!(!field.is_empty(), "an error must name its field");
    Ok(())
}

#[test]
fn fuzz_decode_request() {
    let ok = request();
    assert_eq!(decode_request(&ok.encode()).ok(), Some(ok.clone()));
    let mut no_env = json(&ok);
    no_env.as_object_mut().unwrap().remove("env");
    fuzz("decode_request", input(vec![json(&ok), no_env]), |b| {
        match decode_request(&b.0) {
            Ok(req) => prop_assert_eq!(decode_request(&req.encode()).ok(), Some(req)),
            Err(e) => names_a_field(&e.field)?,
        }
        Ok(())
    });
}

#[test]
fn fuzz_decode_result() {
    let mut full = result();
    full.outcome = Outcome::Succeeded;
    full.exit_code = Some(0);
    full.stdout_tail = "ok".into();
    full.started_ms = Some(1);
    full.finished_ms = Some(u64::MAX);
    assert_eq!(decode_result(&full.encode()).ok(), Some(full.clone()));
    fuzz(
        "decode_result",
        input(vec![json(&result()), json(&full)]),
        |b| {
            match decode_result(&b.0) {
                Ok(res) => prop_assert_eq!(decode_result(&res.encode()).ok(), Some(res)),
                Err(e) => names_a_field(&e.field)?,
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_request_ids_peek() {
    let ok = request();
    assert_eq!(RequestIds::peek(&ok.encode()), Some(ok.ids()));
    fuzz("RequestIds::peek", input(vec![json(&ok)]), |b| {
        let ids = RequestIds::peek(&b.0);
        // Whatever decodes as a request has readable ids, and the same ones.
        if let Ok(req) = decode_request(&b.0) {
            prop_assert_eq!(ids, Some(req.ids()));
        }
        Ok(())
    });
}

#[test]
fn fuzz_presence_decode() {
    let ok = presence_record();
    let mut minimal = json(&ok);
    for k in ["nodes", "pid", "executed", "rejected", "running"] {
        minimal.as_object_mut().unwrap().remove(k);
    }
    fuzz("presence::decode", input(vec![json(&ok), minimal]), |b| {
        match presence::decode(&b.0) {
            Ok(p) => prop_assert_eq!(
                presence::decode(&serde_json::to_vec(&p).unwrap()).ok(),
                Some(p)
            ),
            Err(e) => names_a_field(&e.field)?,
        }
        Ok(())
    });
}

/// A trust file with one executor (`exec-1` of group `g1`) whose key is `executor`'s.
fn trust(executor: &Identity, service: &Identity) -> Trust {
    Trust::parse(
        "trust.toml",
        &format!(
            "[service]\nkey = \"{}\"\n\n[[executor]]\nname = \"exec-1\"\nkey = \"{}\"\ngroup = \"g1\"\n",
            service.public_key(),
            executor.public_key()
        ),
    )
    .unwrap()
}

#[test]
fn fuzz_presence_open_and_envelope_open() {
    let executor = Identity::generate();
    let service = Identity::generate();
    let trust = trust(&executor, &service);
    let key = presence::key("exec-1");
    let sealed = presence::seal(&presence_record(), &executor);
    assert!(presence::open(&sealed, &key, &trust).is_ok());
    let envelope: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    // Valid envelopes mutated: in the body (the signature then fails), the key or the signature.
    fuzz("presence::open", input(vec![envelope.clone()]), |b| {
        match presence::open(&b.0, &key, &trust) {
            Ok((p, name)) => {
                prop_assert_eq!(name, "exec-1");
                prop_assert_eq!(p.group, "g1");
            }
            Err(e) => names_a_field(&e.field)?,
        }
        Ok(())
    });
    fuzz("sign::Envelope::open", input(vec![envelope]), |b| {
        match Envelope::open(&b.0, Kind::Presence, &key) {
            Ok((v, _)) => prop_assert_eq!(v.key, executor.public_key()),
            Err(e) => prop_assert!(!e.reason.is_empty()),
        }
        Ok(())
    });
}

#[test]
fn fuzz_verify_headers() {
    let signer = Identity::generate();
    let payload = request().encode();
    let subject = "baton.step.g1";
    let mut good = async_nats::HeaderMap::new();
    let sig = signer.sign_headers(&mut good, Kind::Step, subject, "ctx", &payload);
    assert!(protocol::sign::verify_headers(Some(&good), Kind::Step, subject, &payload).is_ok());
    let key = signer.public_key();
    // Header values: the valid one, arbitrary text, or the valid one with a byte edited.
    let value = |valid: String| {
        prop_oneof![
            Just(valid.clone()),
            ".{0,140}",
            (any::<usize>(), any::<u8>(), any::<u8>()).prop_map(move |(at, k, b)| {
                let mut v = valid.clone().into_bytes();
                support::byte_edit(&mut v, at, k, b);
                String::from_utf8_lossy(&v).into_owned()
            }),
        ]
    };
    let headers = (
        proptest::option::of(value(key.clone())),
        proptest::option::of(value(sig.clone())),
        proptest::option::of(value("ctx".into())),
        any::<bool>(),
    );
    fuzz(
        "sign::verify_headers",
        headers,
        |(k, s, c, mutate_payload)| {
            let mut h = async_nats::HeaderMap::new();
            // A value with a line break cannot arrive (NATS headers are lines; async-nats refuses to build one).
            let arrives = |v: &&String| !v.contains(['\r', '\n']);
            for (name, v) in [("Baton-Key", &k), ("Baton-Sig", &s), ("Baton-Context", &c)] {
                if let Some(v) = v.as_ref().filter(arrives) {
                    h.insert(name, v.as_str());
                }
            }
            let mut body = payload.clone();
            if mutate_payload {
                body.push(b' ');
            }
            let verdict = protocol::sign::verify_headers(Some(&h), Kind::Step, subject, &body);
            let genuine = k.as_ref().filter(arrives) == Some(&key)
                && s.as_ref().filter(arrives) == Some(&sig)
                && c.as_ref().filter(arrives).map(String::as_str) == Some("ctx")
                && !mutate_payload;
            prop_assert_eq!(verdict.is_ok(), genuine, "{:?}", verdict);
            Ok(())
        },
    );
}

#[test]
fn fuzz_trust_parse() {
    let a = Identity::generate();
    let b = Identity::generate();
    let c = Identity::generate();
    let mut good = trust(&a, &b);
    good.operators.push(protocol::sign::OperatorPeer {
        name: "alice".into(),
        key: c.public_key(),
        role: protocol::sign::Role::Approver,
    });
    let text = good.to_toml();
    assert_eq!(Trust::parse("trust.toml", &text).unwrap(), good);
    let strategy = prop_oneof![
        bytes(512).prop_map(|b| String::from_utf8_lossy(&b.0).into_owned()),
        mutated_text(vec![text]),
    ];
    fuzz("sign::Trust::parse", strategy, |text| {
        match Trust::parse("trust.toml", &text) {
            Ok(t) => prop_assert_eq!(Trust::parse("trust.toml", &t.to_toml()).ok(), Some(t)),
            Err(protocol::ProtocolError::Trust {
                file, line, field, ..
            }) => {
                prop_assert_eq!(file, "trust.toml");
                prop_assert!(!field.is_empty());
                prop_assert!(
                    line <= text.lines().count().max(1),
                    "line {} is past the end",
                    line
                );
            }
            Err(other) => prop_assert!(false, "not a located trust error: {}", other),
        }
        Ok(())
    });
}

#[test]
fn fuzz_nats_url() {
    // `options` is async but awaits nothing when no creds file is given: a current-thread runtime suffices.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let url = prop_oneof![
        ".{0,80}",
        mutated_text(vec![
            "nats://user:secret@127.0.0.1:4222, tls://token@[::1]:4223/x".into(),
            "nats://h1:4222,nats://h2:4222".into(),
        ]),
    ];
    fuzz("connect::NatsConfig::options", url, |url| {
        let config = protocol::connect::NatsConfig::new(url.trim_end_matches('\n'));
        let redacted = config.redacted_url();
        let _ = config.has_auth();
        let refused = rt
            .block_on(config.options("fuzz"))
            .err()
            .map(|e| e.to_string());
        // What logs and errors show never carries the password of the valid URL, however mangled.
        prop_assert!(!redacted.contains("secret@"), "{}", redacted);
        prop_assert!(!refused.unwrap_or_default().contains("secret@"));
        Ok(())
    });
}
