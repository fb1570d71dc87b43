//! A least-privilege nats-server configuration for a deployment described by
//! its [`Trust`] file ([`render`]).
//!
//! Every Baton process authenticates to nats-server as an nkey user with the
//! key it signs with, so the trust file already lists every user. Each gets
//! exactly the subjects its role needs ([`users`]); anything not allowed is
//! denied by the server, and there is no anonymous user:
//!
//! - the **service** is the JetStream administrator of the deployment (it
//!   creates the streams, buckets and its consumer), publishes steps and
//!   events, holds the lease, and answers `baton.api.>` only as a member of
//!   the queue group `baton-workflow`;
//! - an **executor** of group G named N reads the objects it binds, creates,
//!   reads and pulls only its group's durable `exec-G` (filtered to
//!   `baton.step.G`), acks only that consumer's messages, publishes results,
//!   writes only its own presence key and only its group's claims
//!   (`$KV.baton_claims.G.>`: claim keys start with the group,
//!   `subjects::claim_key`);
//! - an **operator** (any role: roles are enforced by the service on
//!   signatures) publishes API requests and reads its replies, nothing else.
//!
//! Every user subscribes only to its own inbox, `_INBOX_<its key>.>`
//! (`subjects::inbox_prefix`; each process sets it as async-nats's inbox
//! prefix, `connect::NatsConfig::inbox_prefix`), so no identity reads
//! another's replies, JetStream answers or pulled steps; nobody may publish
//! to an inbox (the service answers API requests only into operators' own inboxes).
//!
//! Signatures still decide what a message *means*; these permissions decide
//! what a stolen or misbehaving key can *reach*.
//!
//! Known limit of subject permissions here: an executor's access to its
//! group's claims cannot tell create from overwrite or delete (one subject,
//! headers decide), so a compromised executor can still disturb its own
//! group's claims (which it could anyway by lying about its steps).
//!
//! Upgrading from a version whose claim keys had no group prefix: claims
//! made under the old keys are not found under the new ones, so an executor
//! restarted onto the new version mid-upgrade could run a step attempt a
//! sibling already claimed. Finish or abort upgrades before upgrading Baton.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::sign::Trust;
use crate::subjects;

/// The KV bucket of the service's lease (one active service at a time).
pub const LEASE_BUCKET: &str = "baton_lease";

/// The queue group the service answers the API in.
pub const API_QUEUE_GROUP: &str = "baton-workflow";

/// TLS files of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA (PEM) client certificates must be signed by (`verify: true`).
    pub ca: PathBuf,
}

/// Where and how the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// The address clients connect to (`127.0.0.1`, `0.0.0.0`).
    pub host: String,
    pub port: u16,
    /// JetStream's store directory.
    pub store_dir: PathBuf,
    /// TLS for every client connection, with client certificates required.
    pub tls: Option<TlsFiles>,
    /// The HTTP monitoring port (on `host`), if any.
    pub monitor_port: Option<u16>,
}

/// Which kind of Baton process a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    Service,
    Executor,
    Operator,
}

/// One subject (or subject and queue group) a user may use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// A subject, or `subject queue` for a subscription only in that queue group.
    pub subject: String,
    /// What it is for (a comment in the rendered file).
    pub why: &'static str,
}

/// One nkey user of the rendered configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub kind: UserKind,
    /// The trust file's name for it.
    pub name: String,
    /// The nkey public key (`U...`).
    pub key: String,
    /// Extra context for the comment (an executor's group, an operator's role).
    pub note: String,
    pub publish: Vec<Allow>,
    pub subscribe: Vec<Allow>,
    /// Whether it may publish one reply to the reply subject of a request it received.
    pub allow_responses: bool,
}

fn allow(subject: impl Into<String>, why: &'static str) -> Allow {
    Allow {
        subject: subject.into(),
        why,
    }
}

/// Every process reads the replies to its own requests (JetStream API
/// answers, publish acks, pulled messages, KV watches, API replies) under
/// its own inbox prefix, named after its key, and nobody else's.
fn inbox(key: &str) -> Allow {
    allow(
        format!("{}.>", subjects::inbox_prefix(key)),
        "its own inbox: replies to its requests, pulled messages",
    )
}

/// The service: the JetStream administrator of the deployment.
fn service_user(trust: &Trust) -> User {
    let results = subjects::RESULTS_STREAM;
    let workflow = subjects::WORKFLOW_CONSUMER;
    User {
        kind: UserKind::Service,
        name: trust.service.name.clone(),
        key: trust.service.key.clone(),
        note: "the workflow service".into(),
        publish: vec![
            allow(subjects::STEPS_WILDCARD, "step requests to executor groups"),
            allow(subjects::EVENTS_WILDCARD, "mirrored workflow events"),
            allow(
                subjects::CHECKPOINTS_WILDCARD,
                "signed checkpoints of the log's hash chains",
            ),
            allow(
                "$JS.API.>",
                "creates and checks streams, buckets and its consumer; reads presence",
            ),
            // Acks and flow-control replies answer delivered messages, which
            // allow_responses would cover too, but only once per message and
            // for two minutes: explicit, so a slow ack or a second one works.
            allow(
                format!("$JS.ACK.{results}.{workflow}.>"),
                "acks the results it consumed",
            ),
            allow(
                "$JS.FC.>",
                "flow control of its ordered consumers (KV keys)",
            ),
            allow(format!("$KV.{LEASE_BUCKET}.>"), "holds the service lease"),
        ]
        .into_iter()
        // API replies go only into the operators' own inboxes, never (as
        // allow_responses would permit) to any reply subject a caller names.
        .chain(trust.operators.iter().map(|o| {
            allow(
                format!("{}.>", subjects::inbox_prefix(&o.key)),
                "API replies to this operator",
            )
        }))
        .collect(),
        subscribe: vec![
            allow(
                format!("{} {API_QUEUE_GROUP}", subjects::API_WILDCARD),
                "API requests, only as a member of its queue group",
            ),
            inbox(&trust.service.key),
        ],
        allow_responses: false,
    }
}

/// An executor named `name` serving `group`.
fn executor_user(name: &str, key: &str, group: &str) -> User {
    let steps = subjects::STEPS_STREAM;
    let consumer = subjects::group_consumer(group);
    let presence = subjects::PRESENCE_BUCKET;
    let claims = subjects::CLAIMS_BUCKET;
    User {
        kind: UserKind::Executor,
        name: name.to_string(),
        key: key.to_string(),
        note: format!("executor of group {group}"),
        publish: vec![
            allow("$JS.API.INFO", "checks that JetStream is available"),
            allow(
                format!("$JS.API.STREAM.INFO.{steps}"),
                "binds the steps stream",
            ),
            allow(
                format!("$JS.API.STREAM.INFO.KV_{presence}"),
                "binds the presence bucket",
            ),
            allow(
                format!("$JS.API.STREAM.INFO.KV_{claims}"),
                "binds the claims bucket",
            ),
            allow(
                format!("$JS.API.CONSUMER.INFO.{steps}.{consumer}"),
                "reads its group's consumer",
            ),
            // async-nats names the filter in the subject; the server refuses
            // a body whose filter differs, so only `baton.step.<group>` can be
            // bound (no form without the filter: its body could name any).
            allow(
                format!(
                    "$JS.API.CONSUMER.CREATE.{steps}.{consumer}.{}",
                    subjects::step(group)
                ),
                "creates its group's consumer, filtered to its group",
            ),
            allow(
                format!("$JS.API.CONSUMER.MSG.NEXT.{steps}.{consumer}"),
                "pulls its group's steps",
            ),
            allow(
                format!("$JS.ACK.{steps}.{consumer}.>"),
                "acks (and reports progress on) its group's steps",
            ),
            allow(subjects::RESULTS_WILDCARD, "step results"),
            allow(
                format!("$KV.{presence}.{name}"),
                "its own presence record (put and delete)",
            ),
            allow(
                format!("$KV.{claims}.{group}.>"),
                "claims its group's step attempts",
            ),
            // async-nats reads a key with a direct get when the bucket allows
            // it, which buckets it created do (`setup::ensure`); the
            // `STREAM.MSG.GET` fallback is for buckets made otherwise.
            allow(
                format!("$JS.API.DIRECT.GET.KV_{claims}.$KV.{claims}.{group}.>"),
                "reads its group's claims",
            ),
        ],
        subscribe: vec![inbox(key)],
        allow_responses: false,
    }
}

/// An operator (any role; the service checks roles on signatures).
fn operator_user(name: &str, key: &str, role: &str) -> User {
    User {
        kind: UserKind::Operator,
        name: name.to_string(),
        key: key.to_string(),
        note: format!("operator, role {role}"),
        publish: vec![allow(subjects::API_WILDCARD, "API requests")],
        subscribe: vec![inbox(key)],
        allow_responses: false,
    }
}

/// The users of the configuration, with their permissions: the service,
/// then each executor, then each operator, in trust file order.
pub fn users(trust: &Trust) -> Vec<User> {
    let mut users = vec![service_user(trust)];
    users.extend(
        trust
            .executors
            .iter()
            .map(|e| executor_user(&e.name, &e.key, &e.group)),
    );
    users.extend(
        trust
            .operators
            .iter()
            .map(|o| operator_user(&o.name, &o.key, o.role.as_str())),
    );
    users
}

/// A quoted string in nats-server configuration syntax (quoted strings are
/// literal: `$JS...` is not a variable inside quotes).
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quoted_path(path: &std::path::Path) -> String {
    quoted(&path.display().to_string())
}

fn render_allows(out: &mut String, what: &str, allows: &[Allow]) {
    let width = allows
        .iter()
        .map(|a| quoted(&a.subject).len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(out, "        {what}: {{");
    let _ = writeln!(out, "          allow: [");
    for a in allows {
        let subject = quoted(&a.subject);
        let _ = writeln!(out, "            {subject:<width$}  # {}", a.why);
    }
    let _ = writeln!(out, "          ]");
    let _ = writeln!(out, "        }}");
}

fn render_user(out: &mut String, user: &User) {
    let _ = writeln!(out, "    # {} ({})", user.name, user.note);
    let _ = writeln!(out, "    {{");
    let _ = writeln!(out, "      nkey: {}", quoted(&user.key));
    let _ = writeln!(out, "      permissions: {{");
    render_allows(out, "publish", &user.publish);
    render_allows(out, "subscribe", &user.subscribe);
    if user.allow_responses {
        let _ = writeln!(
            out,
            "        # One reply to each request it received (API replies).\n        allow_responses: true"
        );
    }
    let _ = writeln!(out, "      }}");
    let _ = writeln!(out, "    }}");
}

/// The nats-server (2.12) configuration for `trust`'s deployment: JetStream
/// in `opts.store_dir`, TLS with client certificates when `opts.tls` is set,
/// and one nkey user per trust entry with least-privilege permissions
/// ([`users`]). No anonymous access.
pub fn render(trust: &Trust, opts: &ServerOptions) -> String {
    let mut out = String::new();
    out.push_str(
        "# nats-server configuration for a Baton deployment, rendered from its trust file.\n\
         # Every Baton process connects as an nkey user with the key it signs with, and may\n\
         # use only the subjects its role needs; there is no anonymous user.\n\n",
    );
    let _ = writeln!(
        out,
        "listen: {}\n",
        quoted(&format!("{}:{}", opts.host, opts.port))
    );
    if let Some(port) = opts.monitor_port {
        let _ = writeln!(
            out,
            "# HTTP monitoring (read-only; no message contents).\nhttp: {}\n",
            quoted(&format!("{}:{port}", opts.host))
        );
    }
    let _ = writeln!(
        out,
        "# JetStream: the steps, results and events streams, the presence, claims and lease buckets.\n\
         jetstream {{\n  store_dir: {}\n}}\n",
        quoted_path(&opts.store_dir)
    );
    if let Some(tls) = &opts.tls {
        let _ = writeln!(
            out,
            "# TLS on every client connection; clients must present a certificate signed by the CA.\n\
             tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n}}\n",
            quoted_path(&tls.cert),
            quoted_path(&tls.key),
            quoted_path(&tls.ca)
        );
    }
    out.push_str(
        "# One nkey user per trust file entry. Anything not allowed is denied.\n\
         authorization {\n  users = [\n",
    );
    for user in users(trust) {
        render_user(&mut out, &user);
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{ExecutorPeer, Identity, OperatorPeer, Peer, Role};

    fn trust() -> Trust {
        let key = || Identity::generate().public_key();
        Trust {
            service: Peer {
                name: "baton-service".into(),
                key: key(),
            },
            executors: vec![
                ExecutorPeer {
                    name: "e1".into(),
                    key: key(),
                    group: "g1".into(),
                },
                ExecutorPeer {
                    name: "e2".into(),
                    key: key(),
                    group: "g2".into(),
                },
            ],
            operators: vec![
                OperatorPeer {
                    name: "alice".into(),
                    key: key(),
                    role: Role::Approver,
                },
                OperatorPeer {
                    name: "rita".into(),
                    key: key(),
                    role: Role::Reader,
                },
            ],
        }
    }

    fn opts(tls: bool) -> ServerOptions {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 4222,
            store_dir: "/var/lib/baton/nats".into(),
            tls: tls.then(|| TlsFiles {
                cert: "/etc/baton/server.pem".into(),
                key: "/etc/baton/server-key.pem".into(),
                ca: "/etc/baton/ca.pem".into(),
            }),
            monitor_port: Some(8222),
        }
    }

    /// The user block of `key` in the rendered text.
    fn block<'a>(text: &'a str, key: &str) -> &'a str {
        let at = text
            .find(&format!("nkey: \"{key}\""))
            .unwrap_or_else(|| panic!("no user for {key}"));
        let end = text[at..].find("\n    }\n").expect("a closed block");
        &text[at..at + end]
    }

    fn subjects_of(allows: &[Allow]) -> Vec<&str> {
        allows.iter().map(|a| a.subject.as_str()).collect()
    }

    #[test]
    fn every_trust_entry_is_a_user_with_its_own_permissions() {
        let trust = trust();
        let text = render(&trust, &opts(true));
        assert_eq!(text.matches("nkey: ").count(), 5, "{text}");
        assert!(!text.contains("no_auth_user"), "no anonymous access");

        let service = block(&text, &trust.service.key);
        assert!(
            service.contains("\"baton.api.> baton-workflow\""),
            "{service}"
        );
        assert!(service.contains("\"$JS.API.>\"") && !service.contains("allow_responses"));
        for operator in &trust.operators {
            assert!(
                service.contains(&format!("\"_INBOX_{}.>\"", operator.key)),
                "{service}"
            );
        }

        let e1 = block(&text, &trust.executors[0].key);
        for wanted in [
            "\"$JS.API.CONSUMER.CREATE.BATON_STEPS.exec-g1.baton.step.g1\"",
            "\"$JS.API.CONSUMER.MSG.NEXT.BATON_STEPS.exec-g1\"",
            "\"$JS.ACK.BATON_STEPS.exec-g1.>\"",
            "\"$KV.baton_executors.e1\"",
            "\"$KV.baton_claims.g1.>\"",
            "\"$JS.API.DIRECT.GET.KV_baton_claims.$KV.baton_claims.g1.>\"",
            "\"baton.result.>\"",
        ] {
            assert!(e1.contains(wanted), "{wanted} missing from\n{e1}");
        }
        assert!(!e1.contains("g2") && !e1.contains("\"$JS.API.>\""), "{e1}");
        assert!(!e1.contains("baton_claims.>"), "{e1}");
        assert!(
            !e1.contains("baton.step.>") && !e1.contains("baton.api"),
            "{e1}"
        );
        assert!(!e1.contains("allow_responses"), "{e1}");
        let e2 = block(&text, &trust.executors[1].key);
        assert!(e2.contains("exec-g2") && !e2.contains("exec-g1"), "{e2}");

        for operator in &trust.operators {
            let o = block(&text, &operator.key);
            assert!(
                o.contains("\"baton.api.>\"")
                    && o.contains(&format!("\"_INBOX_{}.>\"", operator.key)),
                "{o}"
            );
            assert!(!o.contains("$JS") && !o.contains("$KV"), "{o}");
            assert!(!o.contains("baton.api.> baton-workflow"), "{o}");
        }
    }

    #[test]
    fn no_user_may_publish_or_subscribe_everything() {
        let trust = trust();
        for user in users(&trust) {
            for a in user.publish.iter().chain(&user.subscribe) {
                assert!(
                    a.subject != ">" && !a.subject.starts_with("> ") && a.subject != "*.>",
                    "{} may use {:?}",
                    user.name,
                    a.subject
                );
            }
            // Only the service administers JetStream; only the service publishes
            // into inboxes, and only into operators' (its API replies).
            let publish = subjects_of(&user.publish);
            assert_eq!(
                publish.contains(&"$JS.API.>"),
                user.kind == UserKind::Service,
                "{}",
                user.name
            );
            let operator_inboxes: Vec<String> = trust
                .operators
                .iter()
                .map(|o| format!("_INBOX_{}.>", o.key))
                .collect();
            assert!(
                publish.iter().filter(|s| s.starts_with("_INBOX")).all(|s| {
                    user.kind == UserKind::Service && operator_inboxes.iter().any(|i| i == s)
                }),
                "{publish:?}"
            );
            // Nobody subscribes to steps, results or events directly.
            let subscribe = subjects_of(&user.subscribe);
            assert!(
                subscribe
                    .iter()
                    .all(|s| !s.starts_with("baton.") || *s == "baton.api.> baton-workflow"),
                "{subscribe:?}"
            );
            // Each reads only its own inbox, named after its key.
            let own = format!("_INBOX_{}.>", user.key);
            let inboxes: Vec<&&str> = subscribe.iter().filter(|s| s.contains("INBOX")).collect();
            assert_eq!(inboxes, vec![&own.as_str()], "{}", user.name);
        }
    }

    #[test]
    fn server_options_are_rendered_and_tls_verifies_clients() {
        let text = render(&trust(), &opts(true));
        assert!(text.contains("listen: \"127.0.0.1:4222\""), "{text}");
        assert!(text.contains("http: \"127.0.0.1:8222\""), "{text}");
        assert!(
            text.contains("store_dir: \"/var/lib/baton/nats\""),
            "{text}"
        );
        assert!(
            text.contains("ca_file: \"/etc/baton/ca.pem\"\n  verify: true"),
            "{text}"
        );
        let plain = render(
            &trust(),
            &ServerOptions {
                monitor_port: None,
                ..opts(false)
            },
        );
        assert!(
            !plain.contains("tls {") && !plain.contains("http:"),
            "{plain}"
        );
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
