//! Fuzzing the pure core's decoders of untrusted text (issue 12): the cluster file, every parser of command
//! output in chef-backend's reader (`core::builtin::chef_backend::reader`), and exported event logs through replay -> verify -> decide. Inputs are arbitrary
//! bytes and mutations of valid ones (the parsers' goldens, the outputs and events of real runs against the
//! fake cluster), with boundary numbers (0, 1, u32::MAX, u64::MAX, ...) favoured in every numeric field. Nothing
//! may panic; errors name the file, line and field (cluster file) or the output (parsers). Builds without the
//! `service` feature. `BATON_FUZZ_CASES` sets the inputs per decoder (10,000 unless set).

mod common;
#[path = "../../tests/fuzz/support.rs"]
mod support;

use std::borrow::Cow;
use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use support::{boundary_number, bytes, fuzz, mutated_text};
use workflow::core::builtin::chef_backend::reader as parse;
use workflow::core::{
    decide, profile_file, replay, verify, version, ClusterFile, CoreError, Event, Input, Outcome,
    Rejection, State, LATEST_MS,
};

/// Real histories: complete runs of both procedures, one stopped at a gate, one whose install fails.
fn histories() -> &'static Vec<Vec<Event>> {
    static H: OnceLock<Vec<Vec<Event>>> = OnceLock::new();
    H.get_or_init(|| {
        let mut out = Vec::new();
        for (procedure, gates, fail) in [
            ("runbook", "", false),
            ("upgrade-command", "", false),
            ("runbook", "\"before-switchover\"", false),
            ("runbook", "", true),
        ] {
            let mut run = Run::new();
            let mut fake = FakeCluster::new("3.0.0-1");
            if fail {
                fake.install_fails.insert("backend-2".into());
            }
            run.input(submit(cluster(procedure, gates), run.now))
                .expect("a submission of the test cluster is accepted");
            run.run_to_rest(&mut fake, 2_000);
            out.push(run.history);
        }
        out
    })
}

/// The command outputs of those runs (every probe's stdout) and the parsers' goldens.
fn outputs() -> Vec<String> {
    let mut out: Vec<String> = histories()
        .iter()
        .flatten()
        .filter_map(|e| match serde_json::to_value(e).ok()?.get("stdout")? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out.extend(
        [
            "Service        Local Status        Time in State  Distributed Node Status\n\
             leaderl        running (pid 6881)  0d 0h 43m 35s  leader: 1; waiting: 0; follower: 2; total: 3\n\
             etcd           running (pid 6833)  0d 0h 43m 41s  health: green; healthy nodes: 3/3\n\
             postgresql     down                 0d 0h 10m 27s   error: could not reach pgsql leader\n\
             elasticsearch  running (pid 6796)  0d 0h 43m 43s  state: green; nodes online: 3/3\n",
            "Name       IP              GUID                              Role            PG        ES\n\
             backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  deposed_leader  follower  not_master\n\
             backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  leader          leader    not_master\n",
            "run: elasticsearch: (pid 6661) 106983s; run: log: (pid 6667) 106983s\n\
             ok: down: etcd: 393s, normally up\nok: run: postgresql: (pid 12345) 1s\n",
            r#"{"failover": false, "leader": "backend-2", "nodes": [
            {"name": "backend-1", "role": "follower", "failover": true, "running": false},
            {"name": "backend-3", "role": "follower"}]}"#,
            "installed 3.1.0-1\n",
            "half-configured 3.1.0-1.el7\n",
            "3.10.0-12\n",
        ]
        .map(str::to_string),
    );
    out
}

/// Text: arbitrary bytes read as UTF-8, or a mutated valid output.
fn text(valid: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        bytes(400).prop_map(|b| String::from_utf8_lossy(&b.0).into_owned()),
        mutated_text(valid),
    ]
}

/// A parser's error names the output it could not parse.
fn parse_error(e: CoreError) -> Result<(), TestCaseError> {
    match e {
        CoreError::Parse { what, message } => {
            prop_assert!(!what.is_empty() && !message.is_empty())
        }
        other => prop_assert!(false, "a parser returned a non-parse error: {}", other),
    }
    Ok(())
}

#[test]
fn fuzz_output_parsers() {
    let valid = outputs();
    // Each parser sees every valid output, mutated: a parser fed another command's output must refuse it.
    fuzz("parse::parse_status", text(valid.clone()), |t| {
        parse::parse_status(&t)
            .map(|r| {
                for row in r.services.values() {
                    let _ = parse::describe_state(&row.state);
                }
            })
            .or_else(parse_error)
    });
    fuzz("parse::parse_simple_status", text(valid.clone()), |t| {
        parse::parse_simple_status(&t)
            .map(drop)
            .or_else(parse_error)
    });
    fuzz("parse::parse_cluster_status", text(valid.clone()), |t| {
        parse::parse_cluster_status(&t)
            .map(drop)
            .or_else(parse_error)
    });
    fuzz("parse::parse_failover_json", text(valid.clone()), |t| {
        parse::parse_failover_json(&t)
            .map(drop)
            .or_else(parse_error)
    });
    fuzz("parse::parse_version_output", text(valid.clone()), |t| {
        parse::parse_version_output(&t)
            .map(drop)
            .or_else(parse_error)
    });
    fuzz("parse::parse_package_state", text(valid.clone()), |t| {
        if let Ok((v, _)) = parse::parse_package_state(&t) {
            // A normalised version is a fixed point, and has a key unless a number overflows u64.
            prop_assert_eq!(version::normalize_version(&v), Some(v.clone()));
        }
        Ok(())
    });
    let versions = vec![
        "3.1.0-1".to_string(),
        "3.10.0-1.el7".to_string(),
        "/var/tmp/chef-backend_3.1.0-1_amd64.deb".to_string(),
        "/tmp/chef-backend-3.1.0-1.el7.x86_64.rpm".to_string(),
    ];
    fuzz(
        "parse::{version_key, normalize_version, version_from_package}",
        text(versions),
        |t| {
            let _ = version::version_key(&t);
            if let Some(v) = version::normalize_version(&t) {
                prop_assert_eq!(version::normalize_version(&v), Some(v.clone()));
            }
            let _ = parse::version_from_package(&t);
            Ok(())
        },
    );
}

#[test]
fn fuzz_cluster_file_parse() {
    let valid = vec![
        cluster_toml("runbook", ""),
        cluster_toml(
            "upgrade-command",
            "\"after-first-follower\", \"before-switchover\"",
        ),
    ];
    fuzz("ClusterFile::parse", text(valid), |t| {
        match ClusterFile::parse("cluster.toml", &t) {
            Ok(c) => prop_assert!(!c.nodes.is_empty()),
            Err(CoreError::Config {
                file, line, field, ..
            }) => {
                prop_assert_eq!(file, "cluster.toml");
                prop_assert!(!field.is_empty());
                if let Some(line) = line {
                    prop_assert!(line >= 1 && line <= t.lines().count().max(1));
                }
            }
            Err(other) => prop_assert!(false, "not a located config error: {}", other),
        }
        Ok(())
    });
}

/// A profile file (issue 13) in the shape of an etcd one, and a Patroni-shaped variant of its topology.
const PROFILE: &str = include_str!("data/saved-etcd.toml");

#[test]
fn fuzz_profile_file_parse() {
    let valid = vec![
        PROFILE.to_string(),
        PROFILE.replace(
            "match = \"address\"\nleader_when = { equal = [\"/Status/header/member_id\", \"/Status/leader\"] }",
            "leader_when = { field = \"/Role\", in = [\"Leader\"] }\nlag = \"/Lag in MB\"\nmax_lag = 0",
        ),
    ];
    fuzz("ProfileFile::parse", text(valid), |t| {
        match profile_file::ProfileFile::parse("p.toml", &t) {
            Ok(p) => {
                prop_assert!(!p.procedure.follower.is_empty());
                prop_assert!(p.actions.contains_key(&p.procedure.switchover));
            }
            Err(CoreError::Config {
                file, line, field, ..
            }) => {
                prop_assert_eq!(file, "p.toml");
                prop_assert!(!field.is_empty());
                if let Some(line) = line {
                    prop_assert!(line >= 1 && line <= t.lines().count().max(1));
                }
            }
            Err(other) => prop_assert!(false, "not a located config error: {}", other),
        }
        Ok(())
    });
}

#[test]
fn fuzz_profile_probe_parsers() {
    let profile = profile_file::ProfileFile::parse("p.toml", PROFILE).unwrap();
    let nodes: Vec<workflow::core::NodeSpec> = (1..=3)
        .map(|i| workflow::core::NodeSpec {
            name: format!("m{i}"),
            address: format!("127.0.0.1:{}", 2377 + 2 * i),
            executor: format!("m{i}"),
            vars: Default::default(),
        })
        .collect();
    let valid = vec![
        r#"[{"Endpoint":"http://127.0.0.1:2379","Status":{"header":{"member_id":11},"leader":22}},
{"Endpoint":"http://127.0.0.1:2381","Status":{"header":{"member_id":22},"leader":22}}]"#
            .to_string(),
        r#"[{"endpoint":"http://127.0.0.1:2379","health":true,"took":"1ms"}]"#.to_string(),
        "etcd Version: 3.4.23\nGit SHA: Not provided\n".to_string(),
    ];
    fuzz(
        "profile_file::parse_{topology,node,version}",
        text(valid),
        |t| {
            match profile_file::parse_topology(&profile.probes.topology, &t, &nodes) {
                Ok(topology) => {
                    prop_assert!(!topology.members.is_empty());
                    for m in &topology.members {
                        // A member that names a node is that node (any other keeps its raw identity).
                        if m.known {
                            prop_assert!(nodes.iter().any(|n| n.name == m.node));
                        }
                    }
                }
                Err(e) => parse_error(e)?,
            }
            profile_file::parse_node(&profile.probes.node, &t)
                .map(drop)
                .or_else(parse_error)?;
            match profile_file::parse_version(&profile.probes.version, &t) {
                Ok(v) => prop_assert!(profile_file::version_numbers(&v).is_some()),
                Err(e) => parse_error(e)?,
            }
            Ok(())
        },
    );
}

/// An event sequence as exported (JSON), then edited: events dropped, duplicated, swapped or taken from other
/// runs, and numbers (boundary values favoured) and strings changed inside them.
#[derive(Clone, Debug)]
enum SeqEdit {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// An event of any history inserted at a position.
    Foreign(usize, usize, usize),
    /// A structure-aware edit of one event.
    Json(usize, support::Edit),
}

fn seq_edit() -> impl Strategy<Value = SeqEdit> {
    prop_oneof![
        1 => any::<usize>().prop_map(SeqEdit::Drop),
        1 => any::<usize>().prop_map(SeqEdit::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| SeqEdit::Swap(a, b)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(a, b, c)| SeqEdit::Foreign(a, b, c)),
        6 => (any::<usize>(), support::edit()).prop_map(|(i, e)| SeqEdit::Json(i, e)),
    ]
}

#[derive(Clone, Debug)]
struct Sequence {
    history: usize,
    /// Keep only the first `len` events (mod the history's length + 1).
    len: usize,
    edits: Vec<SeqEdit>,
    /// Now, for the tick and the late result given to `decide`.
    now: u64,
    step: u64,
    attempt: u32,
}

fn sequence() -> impl Strategy<Value = Sequence> {
    let number = prop_oneof![
        any::<u64>().prop_map(boundary_number),
        any::<u64>().prop_map(serde_json::Value::from),
    ]
    .prop_map(|v| v.as_u64().unwrap_or(0));
    (
        any::<usize>(),
        any::<usize>(),
        proptest::collection::vec(seq_edit(), 0..12),
        number.clone(),
        number,
        prop_oneof![Just(0u32), Just(1), Just(u32::MAX), any::<u32>()],
    )
        .prop_map(|(history, len, edits, now, step, attempt)| Sequence {
            history,
            len,
            edits,
            now,
            step,
            attempt,
        })
}

/// An event of the edited sequence: a real one untouched so far, or one that went through JSON (an edit made
/// it a value). Only edited events pay for the JSON round trip (a history is up to 5,085 events, an input
/// edits at most 11); an untouched event is taken as it is, which is what its round trip would give:
/// `every_real_event_survives_the_json_round_trip` holds `from_value(to_value(e)) == e` for every event of
/// the real histories, so the property sees exactly the events an all-JSON import would.
#[derive(Clone)]
enum Item {
    Kept(&'static Event),
    Edited(serde_json::Value),
}

impl Item {
    fn value_mut(&mut self) -> &mut serde_json::Value {
        if let Item::Kept(e) = *self {
            *self = Item::Edited(serde_json::to_value(e).expect("an event encodes"));
        }
        match self {
            Item::Edited(v) => v,
            Item::Kept(_) => unreachable!("made a value above"),
        }
    }

    /// The event an import would read, if it still decodes (an untouched one is borrowed, not cloned).
    fn event(self) -> Option<Cow<'static, Event>> {
        match self {
            Item::Kept(e) => Some(Cow::Borrowed(e)),
            Item::Edited(v) => serde_json::from_value(v).ok().map(Cow::Owned),
        }
    }
}

/// The edited sequence, as exported (JSON) and edited, then the events that still decode (like an import of
/// an edited export).
fn events_of(s: &Sequence) -> Vec<Cow<'static, Event>> {
    let all = histories();
    let h = &all[s.history % all.len()];
    let mut items: Vec<Item> = h[..s.len % (h.len() + 1)].iter().map(Item::Kept).collect();
    for e in &s.edits {
        let n = items.len().max(1);
        match e {
            SeqEdit::Drop(i) if !items.is_empty() => {
                items.remove(i % n);
            }
            SeqEdit::Duplicate(i) if !items.is_empty() => {
                let v = items[i % n].clone();
                items.insert(i % n, v);
            }
            SeqEdit::Swap(a, b) if !items.is_empty() => items.swap(a % n, b % n),
            SeqEdit::Foreign(at, which, i) => {
                let other = &all[which % all.len()];
                items.insert(at % (items.len() + 1), Item::Kept(&other[i % other.len()]));
            }
            SeqEdit::Json(i, edit) if !items.is_empty() => {
                support::apply(items[i % n].value_mut(), edit)
            }
            _ => {}
        }
    }
    items.into_iter().filter_map(Item::event).collect()
}

/// What lets `events_of` skip the JSON round trip of an unedited event: every event of every real history
/// encodes and decodes back to itself.
#[test]
fn every_real_event_survives_the_json_round_trip() {
    let mut checked = 0;
    for h in histories() {
        for e in h {
            let back: Event =
                serde_json::from_value(serde_json::to_value(e).expect("an event encodes"))
                    .expect("an encoded event decodes");
            assert_eq!(&back, e, "an event survives its JSON round trip");
            checked += 1;
        }
    }
    assert!(checked > 5_000, "{checked} events checked");
}

/// The state's queries, as the service and the CLI call them.
fn query(state: &State) {
    let _ = state.status();
    let _ = state.next_wakeup_ms();
    let _ = state.outstanding_steps();
    let _ = state.is_terminal();
}

#[test]
fn fuzz_replay_verify_decide() {
    // The unedited histories replay and verify.
    for h in histories() {
        verify(h).expect("a real history verifies");
    }
    fuzz(
        "replay -> verify -> decide(Tick, StepFinished)",
        sequence(),
        |s| {
            let events = events_of(&s);
            let state = replay(events.iter().map(|e| &**e));
            query(&state);
            // A prefix may end inside a decision's batch: only a whole history must verify.
            let verdict = verify(&events);
            let whole = histories()[s.history % histories().len()].len();
            if s.edits.is_empty() && events.len() == whole {
                prop_assert!(verdict.is_ok(), "a real history verifies: {:?}", verdict);
            }
            // Any time at all: past the end of year 9999 the core refuses the
            // input (`Rejection::ClockOutOfRange`), which removed a cliff where
            // saturated deadlines made `decide` wind a whole upgrade through
            // thousands of rounds (up to 9.7 s of CPU for one input).
            let now = s.now;
            for input in [
                Input::Tick { now_ms: now },
                Input::StepFinished {
                    step: s.step,
                    attempt: s.attempt,
                    outcome: Outcome::Unknown,
                    exit_code: Some(i32::MIN),
                    stdout: String::new(),
                    stderr: String::new(),
                    reason: None,
                    executor: "exec-g1".into(),
                    now_ms: now,
                },
            ] {
                if let Ok(new) = decide(&state, &input) {
                    let mut after = state.clone();
                    for e in &new {
                        after.apply(e);
                    }
                    query(&after);
                }
            }
            Ok(())
        },
    );
}

/// A time past the end of year 9999 is refused, whatever the state: no clock
/// gives it, and deadlines computed from it would saturate.
#[test]
fn a_tick_past_the_latest_time_is_refused() {
    for h in histories() {
        for cut in [h.len() / 4, h.len() / 2, h.len()] {
            let state = replay(&h[..cut]);
            for now_ms in [LATEST_MS + 1, u64::MAX - 1, u64::MAX] {
                let refused = decide(&state, &Input::Tick { now_ms });
                assert!(
                    matches!(refused, Err(Rejection::ClockOutOfRange { now_ms: n }) if n == now_ms),
                    "a tick at {now_ms} is refused: {refused:?}"
                );
            }
        }
    }
}

/// A tick at the latest accepted time passes every deadline of a real
/// history at once; the core then decides in proportion to what is
/// outstanding (each step it schedules is due a full timeout later), not
/// thousands of rounds: this was up to 9.7 s of CPU for one `decide` at
/// `u64::MAX`, where saturated deadlines made every new step overdue at once.
#[test]
fn a_tick_at_the_latest_time_decides_a_bounded_number_of_events() {
    let mut most = 0;
    for h in histories() {
        for cut in [h.len() / 4, h.len() / 2, h.len()] {
            let state = replay(&h[..cut]);
            let new = match decide(&state, &Input::Tick { now_ms: LATEST_MS }) {
                Ok(new) => new,
                Err(refused) => panic!("a tick at the latest time is accepted: {refused}"),
            };
            let mut after = state.clone();
            for e in &new {
                after.apply(e);
            }
            query(&after);
            // Nothing it scheduled is due at once: a second tick at the same
            // time has nothing more to decide.
            let again = decide(&after, &Input::Tick { now_ms: LATEST_MS }).unwrap_or_default();
            assert!(
                again.is_empty(),
                "a second tick at the same time decided {} more events: {:?}",
                again.len(),
                again.first()
            );
            most = most.max(new.len());
        }
    }
    assert!(most < 100, "a late tick decided {most} events at most");
}
