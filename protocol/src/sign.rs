//! Who may say what: ed25519 identities, the trust file, and the signatures
//! every Baton message carries.
//!
//! - An [`Identity`] is an nkey user seed in a 0600 file (`baton keys gen`).
//!   The same key can authenticate the process to nats-server (nkey users),
//!   so one file is a process's whole identity. nkeys are ed25519 keys.
//! - The [`Trust`] file (public keys only, `trust.toml`) pins the service's
//!   key, each executor's key with the group it serves, and each operator's
//!   key with a [`Role`]. Every process loads the same file.
//! - A signature covers the message's *kind*, its *subject*, a *context*
//!   (API requests: the time they were made; API replies: the signature of
//!   the request they answer) and the payload bytes exactly as sent
//!   ([`signed_bytes`]). It travels in NATS headers ([`KEY_HEADER`],
//!   [`SIG_HEADER`], [`CONTEXT_HEADER`]), or, for KV values (presence), in an
//!   [`Envelope`] around the raw JSON body.
//!
//! Verifying says only that the holder of a key signed exactly these bytes
//! for this kind and subject; *who* that key is, and what it may do, is the
//! caller's question to the [`Trust`]. A refused signature is a
//! [`SignatureError`]: a rejection to count and log, not an infrastructure
//! failure.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// The header with the signer's public key (`U...`, an nkey user key).
pub const KEY_HEADER: &str = "Baton-Key";
/// The header with the hex ed25519 signature.
pub const SIG_HEADER: &str = "Baton-Sig";
/// The header with the signed context (see [`Context`]).
pub const CONTEXT_HEADER: &str = "Baton-Context";

/// What a signature is for; part of the signed bytes, so a signature for one
/// kind of message can never pass as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A step request, signed by the service.
    Step,
    /// A step result, signed by an executor.
    Result,
    /// A presence record, signed by an executor.
    Presence,
    /// An API request, signed by an operator.
    ApiRequest,
    /// An API reply, signed by the service.
    ApiReply,
    /// A checkpoint of an upgrade's hash chain, signed by the service.
    Checkpoint,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Step => "step",
            Kind::Result => "result",
            Kind::Presence => "presence",
            Kind::ApiRequest => "api-request",
            Kind::ApiReply => "api-reply",
            Kind::Checkpoint => "checkpoint",
        }
    }
}

/// The exact bytes a signature covers: a versioned, length-prefixed header
/// naming kind, subject and context, then the payload.
pub fn signed_bytes(kind: Kind, subject: &str, context: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + subject.len() + context.len() + payload.len());
    let _ = writeln!(
        bytes,
        "baton-sig/1 {} {}:{} {}:{}",
        kind.as_str(),
        subject.len(),
        subject,
        context.len(),
        context
    );
    bytes.extend_from_slice(payload);
    bytes
}

/// What the ed25519 signature is made over: the SHA-256 of [`signed_bytes`].
/// Ed25519 hashes its message twice (SHA-512) to sign and once to verify;
/// hashing an 8 KiB result once with SHA-256 (hardware-accelerated where the
/// CPU has it) first makes a step's four signature operations cheaper
/// (`cargo bench -p protocol --bench sign`).
fn digest(kind: Kind, subject: &str, context: &str, payload: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(signed_bytes(kind, subject, context, payload)).into()
}

/// What a signed message says, as one hex digest (SHA-256 of its kind,
/// subject, context and payload): the same for every valid signature of it,
/// so a replay memory keyed on it cannot be dodged by re-encoding a signature.
pub fn message_id(kind: Kind, subject: &str, context: &str, payload: &[u8]) -> String {
    hex::encode(digest(kind, subject, context, payload))
}

/// A signing key: an nkey user key pair, with the file it came from.
#[derive(Clone)]
pub struct Identity {
    pair: Arc<nkeys::KeyPair>,
    /// Where the seed was read from (for messages), if from a file.
    pub path: Option<PathBuf>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .field("path", &self.path)
            .finish()
    }
}

impl Identity {
    /// A new random user key.
    pub fn generate() -> Identity {
        Identity {
            pair: Arc::new(nkeys::KeyPair::new_user()),
            path: None,
        }
    }

    /// From seed text (`SU...`).
    pub fn from_seed(seed: &str) -> Result<Identity, String> {
        let pair =
            nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| format!("not an nkey seed: {e}"))?;
        if pair.key_pair_type() != nkeys::KeyPairType::User {
            return Err(format!(
                "an nkey seed of type {:?}; Baton keys are user keys (seeds start with SU; `baton keys gen` makes one)",
                pair.key_pair_type()
            ));
        }
        Ok(Identity {
            pair: Arc::new(pair),
            path: None,
        })
    }

    /// Load a seed file. Refuses a file that others can read or write: a
    /// key is a secret (`chmod 600`).
    pub fn load(path: &Path) -> Result<Identity, ProtocolError> {
        let err = |reason: String| ProtocolError::Key {
            path: path.to_path_buf(),
            reason,
        };
        // One open; the mode is checked on the handle that is read (no gap
        // between checking one file and reading another).
        let mut file =
            std::fs::File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "its permissions are {mode:o}; a key must be readable by its owner only (chmod 600)"
                )));
            }
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text)
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        let mut identity = Identity::from_seed(&text).map_err(err)?;
        identity.path = Some(path.to_path_buf());
        Ok(identity)
    }

    /// Write the seed to a new file with mode 0600 (never over an existing file).
    pub fn write_seed(&self, path: &Path) -> Result<(), ProtocolError> {
        let err = |reason: String| ProtocolError::Key {
            path: path.to_path_buf(),
            reason,
        };
        let seed = self.pair.seed().map_err(|e| err(format!("no seed: {e}")))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
        file.write_all(format!("{seed}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| err(format!("cannot write it: {e}")))
    }

    /// The seed text, for an nkey connection to NATS (never logged).
    pub fn seed(&self) -> String {
        self.pair.seed().unwrap_or_default()
    }

    /// The public key (`U...`).
    pub fn public_key(&self) -> String {
        self.pair.public_key()
    }

    /// Sign `payload` as a message of `kind` on `subject` with `context`.
    pub fn sign(&self, kind: Kind, subject: &str, context: &str, payload: &[u8]) -> String {
        let sig = self
            .pair
            .sign(&digest(kind, subject, context, payload))
            .expect("a key pair with a seed can sign");
        hex::encode(sig)
    }

    /// Add the signature headers for `payload` to `headers`; returns the
    /// signature (an API client binds the reply to it).
    pub fn sign_headers(
        &self,
        headers: &mut async_nats::HeaderMap,
        kind: Kind,
        subject: &str,
        context: &str,
        payload: &[u8],
    ) -> String {
        let sig = self.sign(kind, subject, context, payload);
        headers.insert(KEY_HEADER, self.public_key().as_str());
        headers.insert(SIG_HEADER, sig.as_str());
        if !context.is_empty() {
            headers.insert(CONTEXT_HEADER, context);
        }
        sig
    }
}

/// Why a signature was refused. A rejection: the message is dropped (or
/// answered as refused), counted and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} on {subject}: {reason}")]
pub struct SignatureError {
    pub kind: &'static str,
    pub subject: String,
    pub reason: String,
}

/// A valid signature: who signed (the public key) and the signed context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key: String,
    pub context: String,
    /// The signature itself (hex).
    pub sig: String,
}

/// Check the signature headers of a message. Says nothing about whether the
/// key is trusted: ask the [`Trust`].
pub fn verify_headers(
    headers: Option<&async_nats::HeaderMap>,
    kind: Kind,
    subject: &str,
    payload: &[u8],
) -> Result<Verified, SignatureError> {
    let refuse = |reason: &str| SignatureError {
        kind: kind.as_str(),
        subject: subject.to_string(),
        reason: reason.to_string(),
    };
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let (Some(key), Some(sig)) = (get(KEY_HEADER), get(SIG_HEADER)) else {
        return Err(refuse("unsigned (no Baton-Key/Baton-Sig headers)"));
    };
    let context = get(CONTEXT_HEADER).unwrap_or_default();
    verify(kind, subject, &context, payload, &key, &sig).map_err(|reason| refuse(&reason))
}

/// Check one signature over `payload`.
pub fn verify(
    kind: Kind,
    subject: &str,
    context: &str,
    payload: &[u8],
    key: &str,
    sig: &str,
) -> Result<Verified, String> {
    let public = nkeys::KeyPair::from_public_key(key)
        .map_err(|_| format!("signer key {key:?} is not an nkey public key"))?;
    if public.key_pair_type() != nkeys::KeyPairType::User {
        return Err(format!("signer key {key} is not a user key"));
    }
    // Exactly one spelling per signature (128 lower-case hex digits): the API's
    // replay memory keys on the text, so `AB` for `ab` must not make a captured
    // request new again (found by the fuzz).
    if sig.len() != 128 || !sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("the signature is not 128 lower-case hex digits".to_string());
    }
    let raw = hex::decode(sig).map_err(|_| "the signature is not hex".to_string())?;
    public
        .verify(&digest(kind, subject, context, payload), &raw)
        .map_err(|_| format!("bad signature for key {key} (forged, or altered in transit)"))?;
    Ok(Verified {
        key: key.to_string(),
        context: context.to_string(),
        sig: sig.to_string(),
    })
}

/// A signed KV value (KV puts carry no headers): the raw JSON body exactly
/// as signed, with the signer's key and the signature.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub key: String,
    pub sig: String,
    pub body: Box<serde_json::value::RawValue>,
}

impl Envelope {
    /// Seal `body` under `identity` for `kind` at `subject` (the KV key).
    pub fn seal<T: Serialize>(
        identity: &Identity,
        kind: Kind,
        subject: &str,
        body: &T,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let body = serde_json::value::to_raw_value(body)?;
        let sig = identity.sign(kind, subject, "", body.get().as_bytes());
        serde_json::to_vec(&Envelope {
            key: identity.public_key(),
            sig,
            body,
        })
    }

    /// Open a sealed value: the verified signer and the body's bytes.
    pub fn open(
        bytes: &[u8],
        kind: Kind,
        subject: &str,
    ) -> Result<(Verified, Vec<u8>), SignatureError> {
        let refuse = |reason: String| SignatureError {
            kind: kind.as_str(),
            subject: subject.to_string(),
            reason,
        };
        let envelope: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| refuse(format!("not a signed envelope: {e}")))?;
        let body = envelope.body.get().as_bytes();
        let verified =
            verify(kind, subject, "", body, &envelope.key, &envelope.sig).map_err(refuse)?;
        Ok((verified, body.to_vec()))
    }
}

/// What an operator may do. Ordered: each role may do what the one before may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// status, list, watch, events, executors, audit.
    Reader,
    /// Also plan, submit, pause, resume, abort, resolve.
    Operator,
    /// Also approve gates.
    Approver,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Approver => "approver",
        }
    }

    /// The least role an API verb needs (`None`: an unknown verb, which the
    /// service rejects anyway).
    pub fn needed_for(verb: &str) -> Option<Role> {
        Some(match verb {
            "status" | "list" | "events" | "executors" | "audit" | "checkpoints" => Role::Reader,
            "plan" | "submit" | "pause" | "resume" | "abort" | "resolve" => Role::Operator,
            "approve" => Role::Approver,
            _ => return None,
        })
    }
}

/// A pinned peer: a name and its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub key: String,
}

/// A pinned executor: the group whose steps it may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorPeer {
    pub name: String,
    pub key: String,
    pub group: String,
}

/// A pinned operator and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPeer {
    pub name: String,
    pub key: String,
    pub role: Role,
}

/// The trust file: every public key the deployment accepts, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub service: Peer,
    pub executors: Vec<ExecutorPeer>,
    pub operators: Vec<OperatorPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    service: PeerFile,
    #[serde(default, rename = "executor")]
    executors: Vec<ExecutorFile>,
    #[serde(default, rename = "operator")]
    operators: Vec<OperatorFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    #[serde(default)]
    name: Option<toml::Spanned<String>>,
    key: toml::Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutorFile {
    name: toml::Spanned<String>,
    key: toml::Spanned<String>,
    group: toml::Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorFile {
    name: toml::Spanned<String>,
    key: toml::Spanned<String>,
    role: Role,
}

impl Trust {
    /// Load and check a trust file; errors name the file, line and key.
    pub fn load(path: &Path) -> Result<Trust, ProtocolError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProtocolError::Trust {
            file: path.display().to_string(),
            line: 0,
            field: "(file)".into(),
            reason: format!("cannot read it: {e}"),
        })?;
        Trust::parse(&path.display().to_string(), &text)
    }

    /// Parse and check trust file text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Trust, ProtocolError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].lines().count().max(1);
        let error = |line: usize, field: &str, reason: String| ProtocolError::Trust {
            file: file.to_string(),
            line,
            field: field.to_string(),
            reason,
        };
        let parsed: TrustFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(s.start)).unwrap_or(0);
            error(line, "(syntax)", e.message().to_string())
        })?;
        let check_key = |field: &str, key: &toml::Spanned<String>| {
            let at = line_of(key.span().start);
            match nkeys::KeyPair::from_public_key(key.get_ref()) {
                Ok(pair) if pair.key_pair_type() == nkeys::KeyPairType::User => Ok(key.get_ref().clone()),
                Ok(_) => Err(error(at, field, "not a user public key (starts with U)".into())),
                Err(_) if key.get_ref().starts_with('S') => Err(error(
                    at,
                    field,
                    "this is a seed (a secret), not a public key: the trust file holds public keys only \
                     (`baton keys show SEEDFILE` prints the public key); treat this seed as leaked"
                        .into(),
                )),
                Err(e) => Err(error(at, field, format!("not an nkey public key: {e}"))),
            }
        };
        let check_name = |field: &str, name: &toml::Spanned<String>| {
            crate::subjects::validate_token(name.get_ref())
                .map(|()| name.get_ref().clone())
                .map_err(|r| error(line_of(name.span().start), field, r.to_string()))
        };
        let service = Peer {
            name: match &parsed.service.name {
                Some(name) => check_name("service.name", name)?,
                None => "baton-service".to_string(),
            },
            key: check_key("service.key", &parsed.service.key)?,
        };
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        seen.insert(service.key.clone(), "service".into());
        let mut remember = |key: &toml::Spanned<String>, who: String| match seen
            .insert(key.get_ref().clone(), who.clone())
        {
            Some(before) => Err(error(
                line_of(key.span().start),
                "key",
                format!("{who} has the same key as {before}: one key per identity"),
            )),
            None => Ok(()),
        };
        let mut executors = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in parsed.executors.iter().enumerate() {
            let at = format!("executor[{i}]");
            let name = check_name(&format!("{at}.name"), &e.name)?;
            if !names.insert(name.clone()) {
                return Err(error(
                    line_of(e.name.span().start),
                    &format!("{at}.name"),
                    format!("executor {name} is listed twice"),
                ));
            }
            let key = check_key(&format!("{at}.key"), &e.key)?;
            remember(&e.key, format!("executor {name}"))?;
            executors.push(ExecutorPeer {
                name,
                key,
                group: check_name(&format!("{at}.group"), &e.group)?,
            });
        }
        let mut operators = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, o) in parsed.operators.iter().enumerate() {
            let at = format!("operator[{i}]");
            let name = check_name(&format!("{at}.name"), &o.name)?;
            if !names.insert(name.clone()) {
                return Err(error(
                    line_of(o.name.span().start),
                    &format!("{at}.name"),
                    format!("operator {name} is listed twice"),
                ));
            }
            let key = check_key(&format!("{at}.key"), &o.key)?;
            remember(&o.key, format!("operator {name}"))?;
            operators.push(OperatorPeer {
                name,
                key,
                role: o.role,
            });
        }
        Ok(Trust {
            service,
            executors,
            operators,
        })
    }

    /// The trust file's text (what `baton keys trust` writes).
    pub fn to_toml(&self) -> String {
        let mut text = String::from(
            "# Baton trust file: public keys only (no secrets). Every process loads it.\n\n",
        );
        text.push_str(&format!(
            "[service]\nname = \"{}\"\nkey = \"{}\"\n",
            self.service.name, self.service.key
        ));
        for e in &self.executors {
            text.push_str(&format!(
                "\n[[executor]]\nname = \"{}\"\nkey = \"{}\"\ngroup = \"{}\"\n",
                e.name, e.key, e.group
            ));
        }
        for o in &self.operators {
            text.push_str(&format!(
                "\n[[operator]]\nname = \"{}\"\nkey = \"{}\"\nrole = \"{}\"\n",
                o.name,
                o.key,
                o.role.as_str()
            ));
        }
        text
    }

    /// Whether `key` is the service's.
    pub fn is_service(&self, key: &str) -> bool {
        self.service.key == key
    }

    /// The executor with this key.
    pub fn executor(&self, key: &str) -> Option<&ExecutorPeer> {
        self.executors.iter().find(|e| e.key == key)
    }

    /// The operator with this key.
    pub fn operator(&self, key: &str) -> Option<&OperatorPeer> {
        self.operators.iter().find(|o| o.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust_text(service: &Identity, exec: &Identity, op: &Identity) -> String {
        format!(
            "[service]\nkey = \"{}\"\n\n[[executor]]\nname = \"e1\"\nkey = \"{}\"\ngroup = \"g1\"\n\n\
             [[operator]]\nname = \"alice\"\nkey = \"{}\"\nrole = \"approver\"\n",
            service.public_key(),
            exec.public_key(),
            op.public_key()
        )
    }

    #[test]
    fn a_signature_covers_kind_subject_context_and_payload() {
        let id = Identity::generate();
        let sig = id.sign(Kind::Step, "baton.step.g1", "", b"{\"a\":1}");
        let key = id.public_key();
        assert!(verify(Kind::Step, "baton.step.g1", "", b"{\"a\":1}", &key, &sig).is_ok());
        assert!(verify(Kind::Result, "baton.step.g1", "", b"{\"a\":1}", &key, &sig).is_err());
        assert!(verify(Kind::Step, "baton.step.g2", "", b"{\"a\":1}", &key, &sig).is_err());
        assert!(verify(Kind::Step, "baton.step.g1", "t=1", b"{\"a\":1}", &key, &sig).is_err());
        assert!(verify(Kind::Step, "baton.step.g1", "", b"{\"a\":2}", &key, &sig).is_err());
        // One spelling only: the same signature in upper case is refused.
        let upper = sig.to_uppercase();
        assert!(verify(Kind::Step, "baton.step.g1", "", b"{\"a\":1}", &key, &upper).is_err());
        let other = Identity::generate().public_key();
        assert!(verify(Kind::Step, "baton.step.g1", "", b"{\"a\":1}", &other, &sig).is_err());
        // The length prefixes keep subject and context apart.
        assert_ne!(
            signed_bytes(Kind::Step, "a b", "", b""),
            signed_bytes(Kind::Step, "a", "b", b"")
        );
    }

    #[test]
    fn headers_round_trip_and_unsigned_messages_are_refused() {
        let id = Identity::generate();
        let mut headers = async_nats::HeaderMap::new();
        id.sign_headers(
            &mut headers,
            Kind::ApiRequest,
            "baton.api.list",
            "t=5",
            b"{}",
        );
        let ok = verify_headers(Some(&headers), Kind::ApiRequest, "baton.api.list", b"{}").unwrap();
        assert_eq!(ok.key, id.public_key());
        assert_eq!(ok.context, "t=5");
        let err = verify_headers(None, Kind::ApiRequest, "baton.api.list", b"{}").unwrap_err();
        assert!(err.reason.contains("unsigned"), "{err}");
        let err =
            verify_headers(Some(&headers), Kind::ApiRequest, "baton.api.abort", b"{}").unwrap_err();
        assert!(err.reason.contains("bad signature"), "{err}");
    }

    #[test]
    fn envelopes_keep_the_body_byte_for_byte() {
        let id = Identity::generate();
        let sealed = Envelope::seal(
            &id,
            Kind::Presence,
            "e1",
            &serde_json::json!({"b": 2, "a": 1}),
        )
        .unwrap();
        let (verified, body) = Envelope::open(&sealed, Kind::Presence, "e1").unwrap();
        assert_eq!(verified.key, id.public_key());
        assert_eq!(body, br#"{"a":1,"b":2}"#.to_vec());
        assert!(Envelope::open(&sealed, Kind::Presence, "e2").is_err());
        let tampered = String::from_utf8(sealed)
            .unwrap()
            .replace("\"b\":2", "\"b\":3");
        assert!(Envelope::open(tampered.as_bytes(), Kind::Presence, "e1").is_err());
        assert!(Envelope::open(br#"{"a":1}"#, Kind::Presence, "e1").is_err());
    }

    #[test]
    fn seed_files_are_0600_and_loose_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.seed");
        let id = Identity::generate();
        id.write_seed(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());
        assert!(id.write_seed(&path).is_err(), "never overwrites a key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn the_trust_file_parses_and_errors_name_line_and_field() {
        let (s, e, o) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let text = trust_text(&s, &e, &o);
        let trust = Trust::parse("trust.toml", &text).unwrap();
        assert!(trust.is_service(&s.public_key()));
        assert_eq!(trust.executor(&e.public_key()).unwrap().group, "g1");
        assert_eq!(
            trust.operator(&o.public_key()).unwrap().role,
            Role::Approver
        );
        assert_eq!(Trust::parse("t", &trust.to_toml()).unwrap(), trust);

        let bad = text.replace(&e.public_key(), "UNOTAKEY");
        let err = Trust::parse("trust.toml", &bad).unwrap_err().to_string();
        assert!(err.starts_with("trust.toml:6: executor[0].key"), "{err}");
        let seed = text.replace(&o.public_key(), &o.seed());
        let err = Trust::parse("trust.toml", &seed).unwrap_err().to_string();
        assert!(
            err.contains("trust.toml:11: operator[0].key") && err.contains("seed"),
            "{err}"
        );
        let dup = text.replace(&o.public_key(), &e.public_key());
        let err = Trust::parse("trust.toml", &dup).unwrap_err().to_string();
        assert!(err.contains("same key as executor e1"), "{err}");
        let bad_role = text.replace("approver", "root");
        let err = Trust::parse("trust.toml", &bad_role)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("trust.toml:12:"), "{err}");
        let bad_group = text.replace("\"g1\"", "\"x y\"");
        let err = Trust::parse("trust.toml", &bad_group)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("trust.toml:7: executor[0].group"), "{err}");
    }

    #[test]
    fn roles_are_ordered_and_cover_every_verb() {
        assert_eq!(Role::needed_for("approve"), Some(Role::Approver));
        assert_eq!(Role::needed_for("abort"), Some(Role::Operator));
        assert_eq!(Role::needed_for("list"), Some(Role::Reader));
        assert_eq!(Role::needed_for("nope"), None);
        assert!(Role::Approver >= Role::Operator && Role::Operator >= Role::Reader);
    }
}
