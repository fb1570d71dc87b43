//! Step requests and step results: the two messages of the step protocol.
//!
//! A [`StepRequest`] travels on `baton.step.<group>` (stream `BATON_STEPS`) from
//! the workflow service to an executor; the executor answers with a
//! [`StepResult`] on `baton.result.<upgrade>` (stream `BATON_RESULTS`). Both
//! carry the idempotency id `<upgrade>:<step>:<attempt>` as `Nats-Msg-Id`
//! (the result with a `:result` suffix), so a re-sent message inside the
//! stream's duplicate window is dropped by the server, and both sides can
//! de-duplicate outside it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{DecodeError, Fields};

/// The version this build writes into `v` and the highest it accepts.
pub const PROTOCOL_VERSION: u32 = 1;

/// The version of a step request that carries `profile_sha256` (a profile file's step). An executor built
/// before that field existed ignores unknown fields and would run such a step without the check; it refuses a
/// version above the one it speaks, so the service sends this one exactly when the field is set. Built-in
/// profiles' requests stay at [`PROTOCOL_VERSION`], byte for byte.
pub const PROFILE_FILE_PROTOCOL_VERSION: u32 = 2;

/// The NATS header that carries the idempotency id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// A command for one node: run `argv` with `env` within `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    /// The upgrade this step belongs to (a ULID string).
    pub upgrade: String,
    /// The step number inside the upgrade.
    pub step: u64,
    /// The attempt number: a retry decided by the workflow is a new attempt.
    pub attempt: u32,
    /// The workflow service's fencing epoch; executors refuse lower epochs.
    pub epoch: u64,
    /// The node the command acts on.
    pub node: String,
    /// The executor group that should run it (also the subject's last token).
    pub group: String,
    /// The profile action's name, for logs and audit (e.g. `stop`, `demote`).
    pub action: String,
    /// The command as argv; never interpreted by a shell.
    pub argv: Vec<String>,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long the command may run before its process group is killed.
    pub timeout_ms: u64,
    /// Absolute unix time (ms) after which the request must not be started.
    pub deadline_ms: u64,
    /// The SHA-256 (64 lower-case hex digits) of the profile file's text whose parsers the service reads this
    /// step's output with: the plan's `profile_sha256`, which the plan hash covers. Absent for a built-in
    /// profile (chef-backend), so those requests keep their bytes. An executor serving a profile file runs a
    /// step only if this is its own file's hash, and one serving a built-in profile only if it is absent: the
    /// argv alone cannot show that both read the output the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_sha256: Option<String>,
}

/// Whether `text` is a SHA-256 as Baton writes one: 64 lower-case hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The command exited with status 0.
    Succeeded,
    /// The command exited non-zero, died from a signal, or could not start.
    Failed,
    /// The command ran past its timeout and its process group was killed.
    TimedOut,
    /// The command may or may not have run (it was started and the executor
    /// lost track of it): the workflow must observe before deciding (rule S4).
    Unknown,
    /// The request was refused without running anything (stale epoch,
    /// malformed, past its deadline, wrong node).
    Rejected,
}

impl Outcome {
    /// The wire name, e.g. `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Unknown => "unknown",
            Outcome::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most bytes of each output stream an executor keeps (its
/// `--max-output` is at most this), and so the most characters a result's
/// `stdout_tail`, `stderr_tail` or `reason` may carry: each kept byte becomes
/// at most one character (invalid UTF-8 becomes U+FFFD). Two tails of 64 KiB
/// stay under NATS's 1 MiB payload even if every byte were escaped as
/// `\u00XX` (6 bytes). [`decode_result`] refuses a longer field, so what the
/// service parses is bounded whoever signed it.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// What an executor reports for one step request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    pub upgrade: String,
    pub step: u64,
    pub attempt: u32,
    pub epoch: u64,
    pub node: String,
    pub outcome: Outcome,
    /// The exit status when the command exited by itself.
    pub exit_code: Option<i32>,
    /// The last bytes of stdout (bounded by the executor's `--max-output`).
    #[serde(default)]
    pub stdout_tail: String,
    /// The last bytes of stderr (bounded likewise).
    #[serde(default)]
    pub stderr_tail: String,
    /// Why, for `rejected` and `unknown` (and spawn failures, signals).
    pub reason: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// The id of the executor that answered.
    pub executor: String,
}

/// The ids that identify a step attempt, readable even from a request that
/// is otherwise malformed, so it can still be answered `rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    pub upgrade: String,
    pub step: u64,
    pub attempt: u32,
    pub epoch: u64,
    pub node: String,
}

impl RequestIds {
    /// Read the ids from a raw request body, if they are there and well typed.
    pub fn peek(bytes: &[u8]) -> Option<RequestIds> {
        let obj = Fields::parse("step request", bytes).ok()?;
        let f = Fields::new("step request", &obj);
        Some(RequestIds {
            upgrade: f.required("upgrade").ok()?,
            step: f.required("step").ok()?,
            attempt: f.required("attempt").ok()?,
            epoch: f.optional("epoch").ok()?.unwrap_or(0),
            node: f.optional("node").ok()?.unwrap_or_default(),
        })
    }

    /// `<upgrade>:<step>:<attempt>`: the request's `Nats-Msg-Id` and ledger key.
    pub fn key(&self) -> String {
        request_msg_id(&self.upgrade, self.step, self.attempt)
    }

    /// A result refusing this request without running anything.
    pub fn rejected(&self, reason: impl Into<String>, executor: &str) -> StepResult {
        StepResult {
            v: PROTOCOL_VERSION,
            upgrade: self.upgrade.clone(),
            step: self.step,
            attempt: self.attempt,
            epoch: self.epoch,
            node: self.node.clone(),
            outcome: Outcome::Rejected,
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            reason: Some(reason.into()),
            started_ms: None,
            finished_ms: None,
            executor: executor.to_string(),
        }
    }
}

/// The request idempotency id: `<upgrade>:<step>:<attempt>`.
pub fn request_msg_id(upgrade: &str, step: u64, attempt: u32) -> String {
    format!("{upgrade}:{step}:{attempt}")
}

/// The idempotency id of a `rejected` result: `<upgrade>:<step>:<attempt>:rejected`. A refusal has its own
/// id so that a refused forgery under a step id never shadows (as a JetStream duplicate) the real result of
/// that step published later.
pub fn rejected_msg_id(upgrade: &str, step: u64, attempt: u32) -> String {
    format!("{upgrade}:{step}:{attempt}:rejected")
}

/// The result idempotency id: `<upgrade>:<step>:<attempt>:result`.
pub fn result_msg_id(upgrade: &str, step: u64, attempt: u32) -> String {
    format!("{upgrade}:{step}:{attempt}:result")
}

impl StepRequest {
    /// The ids of this request.
    pub fn ids(&self) -> RequestIds {
        RequestIds {
            upgrade: self.upgrade.clone(),
            step: self.step,
            attempt: self.attempt,
            epoch: self.epoch,
            node: self.node.clone(),
        }
    }

    /// `<upgrade>:<step>:<attempt>`, sent as `Nats-Msg-Id`.
    pub fn msg_id(&self) -> String {
        request_msg_id(&self.upgrade, self.step, self.attempt)
    }

    /// The key under which an executor claims this attempt before running it
    /// (`<group>.<upgrade>.<step>.<attempt>`, see [`crate::subjects::claim_key`]).
    pub fn claim_key(&self) -> String {
        crate::subjects::claim_key(&self.group, &self.upgrade, self.step, self.attempt)
    }

    /// The subject to publish this request on: `baton.step.<group>`.
    pub fn subject(&self) -> String {
        crate::subjects::step(&self.group)
    }

    /// Encode as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a StepRequest always serialises")
    }

    /// NATS headers carrying the idempotency id.
    pub fn headers(&self) -> async_nats::HeaderMap {
        msg_id_headers(&self.msg_id())
    }
}

impl StepResult {
    /// `<upgrade>:<step>:<attempt>:result` (`...:rejected` for a refusal), sent as `Nats-Msg-Id`.
    pub fn msg_id(&self) -> String {
        match self.outcome {
            Outcome::Rejected => rejected_msg_id(&self.upgrade, self.step, self.attempt),
            _ => result_msg_id(&self.upgrade, self.step, self.attempt),
        }
    }

    /// `<upgrade>:<step>:<attempt>`: the request this result answers.
    pub fn request_key(&self) -> String {
        request_msg_id(&self.upgrade, self.step, self.attempt)
    }

    /// The subject to publish this result on: `baton.result.<upgrade>`.
    pub fn subject(&self) -> String {
        crate::subjects::result(&self.upgrade)
    }

    /// Encode as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a StepResult always serialises")
    }

    /// NATS headers carrying the idempotency id.
    pub fn headers(&self) -> async_nats::HeaderMap {
        msg_id_headers(&self.msg_id())
    }
}

impl StepRequest {
    /// The payload and its headers (idempotency id and the service's
    /// signature over the payload and subject): what the service publishes.
    pub fn signed(&self, service: &crate::sign::Identity) -> (async_nats::HeaderMap, Vec<u8>) {
        let payload = self.encode();
        let mut headers = self.headers();
        service.sign_headers(
            &mut headers,
            crate::sign::Kind::Step,
            &self.subject(),
            "",
            &payload,
        );
        (headers, payload)
    }
}

impl StepResult {
    /// The payload and its headers (the executor's signature): what an
    /// executor publishes.
    ///
    /// Deliberately without `Nats-Msg-Id`: any executor may publish on
    /// `baton.result.>`, so a result published first under another step's id
    /// would make JetStream drop the real one as a duplicate. The service
    /// de-duplicates results itself (the core ignores a second result for a
    /// step; the log refuses a second record under the result's id).
    pub fn signed(&self, executor: &crate::sign::Identity) -> (async_nats::HeaderMap, Vec<u8>) {
        let payload = self.encode();
        let mut headers = async_nats::HeaderMap::new();
        executor.sign_headers(
            &mut headers,
            crate::sign::Kind::Result,
            &self.subject(),
            "",
            &payload,
        );
        (headers, payload)
    }
}

fn msg_id_headers(id: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, id);
    headers
}

fn check_version(f: &Fields<'_>) -> Result<u32, DecodeError> {
    let v: u32 = f.required("v")?;
    if v == 0 || v > PROFILE_FILE_PROTOCOL_VERSION {
        return Err(f.error(
            "v",
            format!(
                "unsupported protocol version {v} (this build speaks 1..={PROFILE_FILE_PROTOCOL_VERSION})"
            ),
        ));
    }
    Ok(v)
}

fn check_token(f: &Fields<'_>, field: &str, value: &str) -> Result<(), DecodeError> {
    crate::subjects::validate_token(value).map_err(|reason| f.error(field, reason.to_string()))
}

/// Decode and validate a step request. Unknown fields are ignored.
pub fn decode_request(bytes: &[u8]) -> Result<StepRequest, DecodeError> {
    const MSG: &str = "step request";
    let obj = Fields::parse(MSG, bytes)?;
    let f = Fields::new(MSG, &obj);
    let req = StepRequest {
        v: check_version(&f)?,
        upgrade: f.required("upgrade")?,
        step: f.required("step")?,
        attempt: f.required("attempt")?,
        epoch: f.required("epoch")?,
        node: f.required("node")?,
        group: f.required("group")?,
        action: f.required("action")?,
        argv: f.required("argv")?,
        env: f.optional("env")?.unwrap_or_default(),
        timeout_ms: f.required("timeout_ms")?,
        deadline_ms: f.required("deadline_ms")?,
        profile_sha256: f.optional("profile_sha256")?,
    };
    check_token(&f, "upgrade", &req.upgrade)?;
    if let Some(sha) = &req.profile_sha256 {
        if !is_sha256_hex(sha) {
            return Err(f.error(
                "profile_sha256",
                "not a SHA-256 (64 lower-case hex digits)".into(),
            ));
        }
    }
    check_token(&f, "group", &req.group)?;
    check_token(&f, "node", &req.node)?;
    match req.argv.first() {
        None => return Err(f.error("argv", "empty: a command needs at least a program".into())),
        Some(p) if p.is_empty() => {
            return Err(f.error("argv", "the program (argv[0]) is empty".into()))
        }
        Some(_) => {}
    }
    if req.timeout_ms == 0 {
        return Err(f.error("timeout_ms", "must be greater than 0".into()));
    }
    if let Some(k) = req
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(f.error("env", format!("invalid variable name {k:?}")));
    }
    Ok(req)
}

/// Decode and validate a step result. Unknown fields are ignored.
pub fn decode_result(bytes: &[u8]) -> Result<StepResult, DecodeError> {
    const MSG: &str = "step result";
    let obj = Fields::parse(MSG, bytes)?;
    let f = Fields::new(MSG, &obj);
    let res = StepResult {
        v: check_version(&f)?,
        upgrade: f.required("upgrade")?,
        step: f.required("step")?,
        attempt: f.required("attempt")?,
        epoch: f.required("epoch")?,
        node: f.optional("node")?.unwrap_or_default(),
        outcome: f.required("outcome")?,
        exit_code: f.optional("exit_code")?,
        stdout_tail: f.optional("stdout_tail")?.unwrap_or_default(),
        stderr_tail: f.optional("stderr_tail")?.unwrap_or_default(),
        reason: f.optional("reason")?,
        started_ms: f.optional("started_ms")?,
        finished_ms: f.optional("finished_ms")?,
        executor: f.required("executor")?,
    };
    check_token(&f, "upgrade", &res.upgrade)?;
    for (field, text) in [
        ("stdout_tail", res.stdout_tail.as_str()),
        ("stderr_tail", res.stderr_tail.as_str()),
        ("reason", res.reason.as_deref().unwrap_or_default()),
    ] {
        // Bytes first: a short text cannot be long in characters.
        if text.len() > MAX_OUTPUT && text.chars().count() > MAX_OUTPUT {
            return Err(f.error(
                field,
                format!(
                    "{} characters, more than the {MAX_OUTPUT} an executor may send",
                    text.chars().count()
                ),
            ));
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const SHA: &str = "a3c5f1e0b2d4968778695a4b3c2d1e0f00112233445566778899aabbccddeeff";

    #[test]
    fn a_request_without_a_profile_hash_keeps_its_bytes_and_one_with_it_round_trips() {
        // A built-in profile's request is byte for byte what this build sent before the field existed, so an
        // older executor and an older log's re-publication read it unchanged.
        let bytes = String::from_utf8(request().encode()).unwrap();
        assert_eq!(
            bytes,
            r#"{"v":1,"upgrade":"01JB0000000000000000000000","step":7,"attempt":1,"epoch":3,"node":"backend-1","group":"backend-1","action":"status","argv":["chef-backend-ctl","status"],"env":{"A":"b"},"timeout_ms":5000,"deadline_ms":1900000000000}"#
        );
        assert_eq!(
            decode_request(bytes.as_bytes()).unwrap().profile_sha256,
            None
        );
        let with = StepRequest {
            profile_sha256: Some(SHA.into()),
            ..request()
        };
        let bytes = with.encode();
        assert!(
            String::from_utf8_lossy(&bytes).ends_with(&format!(r#","profile_sha256":"{SHA}"}}"#))
        );
        assert_eq!(decode_request(&bytes).unwrap(), with);
    }

    /// A profile file's request is version 2 (H-REVIEW2 #1): this build reads it; a build that predates the
    /// hash speaks only version 1 and refuses it, naming `v`, rather than run it without checking the hash
    /// (shown here with version 3, which this build does not speak).
    #[test]
    fn a_profile_files_request_is_version_2_which_a_build_without_it_refuses() {
        let with = StepRequest {
            v: PROFILE_FILE_PROTOCOL_VERSION,
            profile_sha256: Some(SHA.into()),
            ..request()
        };
        assert_eq!(decode_request(&with.encode()).unwrap(), with);
        let newer = StepRequest {
            v: PROFILE_FILE_PROTOCOL_VERSION + 1,
            ..with
        };
        let err = decode_request(&newer.encode()).unwrap_err();
        assert_eq!(err.field, "v", "{err}");
        assert!(
            err.to_string().contains("unsupported protocol version 3"),
            "{err}"
        );
    }

    #[test]
    fn a_profile_hash_that_is_not_a_sha256_is_refused_by_name() {
        for bad in [
            serde_json::json!(""),
            serde_json::json!(SHA.to_uppercase()),
            serde_json::json!(&SHA[1..]),
            serde_json::json!(format!("{SHA}0")),
            serde_json::json!(SHA.replace('a', "g")),
            serde_json::json!(7),
        ] {
            let mut v = serde_json::to_value(request()).unwrap();
            v["profile_sha256"] = bad.clone();
            let err = decode_request(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert_eq!(err.field, "profile_sha256", "{bad}: {err}");
        }
        // null is the same as absent.
        let mut v = serde_json::to_value(request()).unwrap();
        v["profile_sha256"] = serde_json::Value::Null;
        assert_eq!(
            decode_request(&serde_json::to_vec(&v).unwrap()).unwrap(),
            request()
        );
        assert!(is_sha256_hex(SHA));
    }

    #[test]
    fn request_round_trips_and_carries_its_ids() {
        let req = request();
        assert_eq!(decode_request(&req.encode()).unwrap(), req);
        assert_eq!(req.msg_id(), "01JB0000000000000000000000:7:1");
        assert_eq!(req.subject(), "baton.step.backend-1");
        assert_eq!(
            req.headers().get(MSG_ID_HEADER).unwrap().as_str(),
            "01JB0000000000000000000000:7:1"
        );
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let mut v = serde_json::to_value(request()).unwrap();
        v["added_in_a_later_version"] = serde_json::json!({"x": 1});
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), request());
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"step": "seven"}), "step"),
            (serde_json::json!({"argv": []}), "argv"),
            (serde_json::json!({"argv": "rm -rf /"}), "argv"),
            (serde_json::json!({"v": 99}), "v"),
            (serde_json::json!({"epoch": -1}), "epoch"),
            (serde_json::json!({"group": "a.b"}), "group"),
            (serde_json::json!({"timeout_ms": 0}), "timeout_ms"),
            (serde_json::json!({"node": null}), "node"),
            (serde_json::json!({"node": "a b"}), "node"),
            (serde_json::json!({"node": "backend-1.example"}), "node"),
            (serde_json::json!({"upgrade": "U>"}), "upgrade"),
            (serde_json::json!({"env": {"A=B": "c"}}), "env"),
        ];
        for (patch, field) in cases {
            let mut v = serde_json::to_value(request()).unwrap();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let err = decode_request(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = decode_request(b"not json").unwrap_err();
        assert_eq!(err.field, "(message)");
        let err = decode_request(b"[1,2]").unwrap_err();
        assert!(err.reason.contains("an array"), "{err}");
    }

    #[test]
    fn ids_are_peeked_from_a_request_that_is_otherwise_malformed() {
        let body = br#"{"v":1,"upgrade":"U1","step":4,"attempt":2,"epoch":9,"argv":"oops"}"#;
        assert!(decode_request(body).is_err());
        let ids = RequestIds::peek(body).unwrap();
        assert_eq!(ids.key(), "U1:4:2");
        assert_eq!(ids.epoch, 9);
        let rej = ids.rejected("argv: bad", "ex-1");
        assert_eq!(rej.outcome, Outcome::Rejected);
        assert_eq!(rej.msg_id(), "U1:4:2:rejected");
        assert_eq!(rej.request_key(), "U1:4:2");
        assert!(RequestIds::peek(br#"{"upgrade":"U1"}"#).is_none());
    }

    #[test]
    fn result_round_trips_with_snake_case_outcomes() {
        let res = StepResult {
            v: 1,
            upgrade: "U1".into(),
            step: 1,
            attempt: 1,
            epoch: 1,
            node: "n".into(),
            outcome: Outcome::TimedOut,
            exit_code: None,
            stdout_tail: "out".into(),
            stderr_tail: String::new(),
            reason: None,
            started_ms: Some(1),
            finished_ms: Some(2),
            executor: "ex".into(),
        };
        let bytes = res.encode();
        assert!(String::from_utf8_lossy(&bytes).contains("\"timed_out\""));
        assert_eq!(decode_result(&bytes).unwrap(), res);
        let err = decode_result(br#"{"v":1,"upgrade":"U1","step":1,"attempt":1,"epoch":1,"outcome":"exploded","executor":"e"}"#)
            .unwrap_err();
        assert_eq!(err.field, "outcome");
    }

    #[test]
    fn a_result_longer_than_an_executor_may_send_is_refused_by_field() {
        let mut res = StepResult {
            v: 1,
            upgrade: "U1".into(),
            step: 1,
            attempt: 1,
            epoch: 1,
            node: "n".into(),
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            reason: None,
            started_ms: None,
            finished_ms: None,
            executor: "ex".into(),
        };
        // At the bound, in 4-byte characters (256 KiB): accepted.
        res.stdout_tail = "\u{1F600}".repeat(MAX_OUTPUT);
        res.stderr_tail = "e".repeat(MAX_OUTPUT);
        res.reason = Some("r".repeat(MAX_OUTPUT));
        assert_eq!(decode_result(&res.encode()).unwrap(), res);
        for field in ["stdout_tail", "stderr_tail", "reason"] {
            let mut long = res.clone();
            let text = "x".repeat(MAX_OUTPUT + 1);
            match field {
                "stdout_tail" => long.stdout_tail = text,
                "stderr_tail" => long.stderr_tail = text,
                _ => long.reason = Some(text),
            }
            let err = decode_result(&long.encode()).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.to_string().contains("65537 characters"), "{err}");
        }
    }
}
