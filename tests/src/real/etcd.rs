//! A real 3-member etcd cluster on loopback (scripts/real/etcd/, docs/real-clusters.md): started on the old
//! version of `scripts/real/etcd/versions.env`, a writer through etcd's v3 JSON gateway, the manual baseline, and
//! what a test checks afterwards (who leads, which version each member runs, each member's action journal).
//!
//! ```no_run
//! let cluster = tests::real::etcd::EtcdCluster::start().unwrap();
//! let writer = cluster.start_writer().unwrap();
//! // ... upgrade cluster.cluster_file() (its nodes: cluster.node_names()) ...
//! let report = writer.stop().unwrap();
//! assert_eq!(report.lost, 0);
//! ```
//! Dropping the cluster stops every member (`cluster.sh down`) and removes its directory.
//!
//! [`TlsMember`]: a single member serving its clients over TLS only, with `--client-cert-auth`, for the HTTP
//! probes' TLS (`ca_file`, `cert_file`, `key_file`); killed and removed on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

pub use super::journal::Action;
use super::poll;
pub use super::writer::{Writer, WriterReport};
use crate::process::workspace_root;

/// The scripts of the harness.
fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts/real/etcd").join(name)
}

/// Runs a command to its end; its stdout, or an error with its stderr.
fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run {what} ({cmd:?})"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `KEY=VALUE` lines (comments and blank lines skipped).
fn key_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Installs the pinned etcd versions into .tools/etcd if they are not there yet (idempotent; fails with the
/// command that installs a missing dependency).
pub fn install() -> anyhow::Result<()> {
    output(
        Command::new("bash").arg(workspace_root().join("scripts/real/install-etcd.sh")),
        "scripts/real/install-etcd.sh",
    )
    .map(|_| ())
}

/// `start` until it succeeds, 3 times at most (free ports are picked before etcd binds them, so another process
/// may take one in between); the last error, saying `what` did not come up.
fn three_tries<T>(start: impl Fn() -> anyhow::Result<T>, what: &str) -> anyhow::Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start() {
            Ok(started) => return Ok(started),
            Err(e) if attempt >= 3 => {
                return Err(e.context(format!("{what} did not come up in 3 attempts")))
            }
            Err(_) => continue,
        }
    }
}

/// One member as the cluster file names it.
#[derive(Debug, Clone)]
pub struct EtcdNode {
    /// `m1`, `m2`, `m3`.
    pub name: String,
    /// Its client address, `127.0.0.1:PORT` (the cluster file's `address`).
    pub address: String,
    /// Its directory (data, pid, log, `current`, `actions.log`).
    pub dir: PathBuf,
    /// Its control command (`{var.ctl}`): `ctl stop|start|install PACKAGE|...`.
    pub ctl: PathBuf,
    /// Its member ID in hex, as move-leader takes it.
    pub member_id: String,
}

/// One member's own `endpoint status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    pub version: String,
    pub is_leader: bool,
    pub raft_index: u64,
    pub applied_index: u64,
}

/// A running 3-member etcd cluster in a temporary directory; stopped and removed on drop.
pub struct EtcdCluster {
    root: tempfile::TempDir,
    cluster_file: PathBuf,
    nodes: Vec<EtcdNode>,
    endpoints: String,
    old_version: String,
    new_version: String,
    new_package: PathBuf,
    /// The shipped profile the cluster file names (`etcd.toml` unless [`EtcdCluster::with_profile`]).
    profile: String,
    down: bool,
}

impl EtcdCluster {
    /// Installs the etcd versions if needed, starts 3 members on the old version on free loopback ports and waits
    /// until they answer.
    /// Tries up to 3 times: the free ports are picked before etcd binds them, so another process may take one in
    /// between.
    pub fn start() -> anyhow::Result<EtcdCluster> {
        install()?;
        three_tries(Self::start_once, "the etcd cluster")
    }

    fn start_once() -> anyhow::Result<EtcdCluster> {
        let root = tempfile::Builder::new().prefix("baton-etcd-").tempdir()?;
        let up = output(
            Command::new(script("cluster.sh"))
                .arg("up")
                .arg(root.path()),
            "cluster.sh up",
        );
        if let Err(e) = up {
            let _ = Command::new(script("cluster.sh"))
                .arg("down")
                .arg(root.path())
                .output();
            return Err(e);
        }
        let env = key_values(&std::fs::read_to_string(root.path().join("cluster.env"))?);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .ok_or_else(|| anyhow!("cluster.env has no {k}"))
        };
        let endpoints = get("endpoints")?;
        let addresses: Vec<&str> = endpoints.split(',').collect();
        let mut nodes = Vec::new();
        for (i, name) in get("members")?.split_whitespace().enumerate() {
            let dir = root.path().join(name);
            nodes.push(EtcdNode {
                name: name.to_string(),
                address: addresses
                    .get(i)
                    .ok_or_else(|| anyhow!("cluster.env: fewer endpoints than members"))?
                    .to_string(),
                ctl: dir.join("ctl"),
                dir,
                member_id: get(&format!("{name}_id"))?,
            });
        }
        Ok(EtcdCluster {
            cluster_file: root.path().join("cluster.toml"),
            nodes,
            endpoints,
            old_version: get("old_version")?,
            new_version: get("new_version")?,
            new_package: PathBuf::from(get("new_package")?),
            profile: "etcd.toml".to_string(),
            root,
            down: false,
        })
    }

    /// Names the shipped profile `name` (e.g. `etcd-http.toml`) in the cluster file instead of `etcd.toml`.
    pub fn with_profile(mut self, name: &str) -> anyhow::Result<EtcdCluster> {
        let text = std::fs::read_to_string(&self.cluster_file)?;
        let from = workspace_root().join("profiles").join(&self.profile);
        let to = workspace_root().join("profiles").join(name);
        let line = |p: &Path| format!("profile = \"{}\"", p.display());
        anyhow::ensure!(
            text.contains(&line(&from)),
            "the cluster file does not name {}",
            from.display()
        );
        std::fs::write(&self.cluster_file, text.replace(&line(&from), &line(&to)))?;
        self.profile = name.to_string();
        Ok(self)
    }

    /// The shipped profile the cluster file names.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// The cluster's directory (one subdirectory per member).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The Baton cluster file (`[cluster] profile` names profiles/etcd.toml; `[upgrade] package` the new version).
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_file
    }

    pub fn nodes(&self) -> &[EtcdNode] {
        &self.nodes
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&EtcdNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no member {name}"))
    }

    /// Every member's client address, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn old_version(&self) -> &str {
        &self.old_version
    }

    pub fn new_version(&self) -> &str {
        &self.new_version
    }

    /// The package directory of the new version (the cluster file's `[upgrade] package`).
    pub fn new_package(&self) -> &Path {
        &self.new_package
    }

    fn etcdctl(&self) -> PathBuf {
        self.new_package.join("bin/etcdctl")
    }

    /// Each reachable member's own status (a stopped member is left out).
    pub fn status(&self) -> anyhow::Result<Vec<MemberStatus>> {
        let out = Command::new(self.etcdctl())
            .args(["--endpoints", &self.endpoints])
            .args(["--dial-timeout=1s", "--command-timeout=3s"])
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .context("could not run etcdctl endpoint status")?;
        // etcdctl exits 1 when a member does not answer, and still prints the others.
        let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "etcdctl endpoint status: not JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let mut members = Vec::new();
        for m in json.as_array().ok_or_else(|| anyhow!("not an array"))? {
            let endpoint = m["Endpoint"].as_str().unwrap_or_default();
            let node = self
                .nodes
                .iter()
                .find(|n| n.address == endpoint)
                .ok_or_else(|| anyhow!("unknown endpoint {endpoint}"))?;
            let s = &m["Status"];
            let num = |p: &str| {
                s.pointer(p)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| anyhow!("{endpoint}: no {p}"))
            };
            members.push(MemberStatus {
                name: node.name.clone(),
                version: s["version"].as_str().unwrap_or_default().to_string(),
                is_leader: num("/header/member_id")? == num("/leader")?,
                raft_index: num("/raftIndex")?,
                applied_index: num("/raftAppliedIndex")?,
            });
        }
        Ok(members)
    }

    /// The member that leads now, waiting up to 10 s for one.
    pub fn leader(&self) -> anyhow::Result<String> {
        poll(Duration::from_secs(10), || {
            self.status()
                .ok()?
                .into_iter()
                .find(|m| m.is_leader)
                .map(|m| m.name)
        })
        .ok_or_else(|| anyhow!("no member leads after 10 s"))
    }

    /// The version the member's process runs now (`ctl running-version`).
    pub fn running_version(&self, node: &str) -> anyhow::Result<String> {
        let out = output(
            Command::new(&self.node(node)?.ctl).arg("running-version"),
            "ctl running-version",
        )?;
        let json: Value = serde_json::from_str(&out)?;
        json.pointer("/0/Status/version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{node}: running-version printed no version: {out}"))
    }

    /// The version the member runs after its next start (`ctl installed-version`).
    pub fn installed_version(&self, node: &str) -> anyhow::Result<String> {
        let out = output(
            Command::new(&self.node(node)?.ctl).arg("installed-version"),
            "ctl installed-version",
        )?;
        out.lines()
            .find_map(|l| l.strip_prefix("etcd Version: "))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{node}: installed-version printed no version: {out}"))
    }

    /// Every member's action journal, merged in time order (the initial install of the old version included).
    pub fn actions(&self) -> anyhow::Result<Vec<Action>> {
        super::journal::read(
            self.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.dir.as_path())),
        )
    }

    /// Starts the writer (scripts/real/etcd/writer.py) and waits until its first write is acknowledged.
    pub fn start_writer(&self) -> anyhow::Result<Writer> {
        if Command::new("python3").arg("--version").output().is_err() {
            bail!("the etcd writer needs python3: apt-get install python3");
        }
        let dir = tempfile::Builder::new()
            .prefix("writer-")
            .tempdir_in(self.root())?
            .keep();
        let mut cmd = Command::new("python3");
        cmd.arg(script("writer.py"))
            .args(["--endpoints", &self.endpoints]);
        Writer::start("etcd-writer", cmd, &dir, Duration::from_secs(20))
    }

    /// Runs the manual baseline (scripts/real/etcd/manual-upgrade.sh) to the new version.
    pub fn run_manual_upgrade(&self) -> anyhow::Result<ManualRun> {
        let started = Instant::now();
        let out = output(
            Command::new(script("manual-upgrade.sh")).arg(self.root()),
            "manual-upgrade.sh",
        )?;
        let wall = started.elapsed();
        let done = out
            .lines()
            .find_map(|l| l.strip_prefix("done "))
            .ok_or_else(|| anyhow!("manual-upgrade.sh printed no done line: {out}"))?;
        let fields: BTreeMap<&str, &str> = done
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let field = |k: &str| {
            fields
                .get(k)
                .map(|v| v.to_string())
                .ok_or_else(|| anyhow!("done line without {k}: {done}"))
        };
        Ok(ManualRun {
            wall,
            old_leader: field("leader")?,
            new_leader: field("target")?,
            order: field("order")?.split(',').map(str::to_string).collect(),
            output: out,
        })
    }

    /// Stops every member (idempotent). Drop does it too.
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.down = true;
        output(
            Command::new(script("cluster.sh"))
                .arg("down")
                .arg(self.root()),
            "cluster.sh down",
        )
        .map(|_| ())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.down();
        }
    }
}

/// What the manual baseline did.
#[derive(Debug, Clone)]
pub struct ManualRun {
    pub wall: Duration,
    /// The member that led when it started (upgraded last).
    pub old_leader: String,
    /// The upgraded member it moved leadership to.
    pub new_leader: String,
    /// The members in the order it upgraded them.
    pub order: Vec<String>,
    /// Its output: one line per step.
    pub output: String,
}

/// The TLS files of a [`TlsMember`] (PEM): the CA, the member's certificate and key, and a client certificate
/// and key signed by the same CA.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Writes a throw-away CA, a server certificate for `127.0.0.1` and `localhost` and a client certificate into
/// `dir`. Unlike `protocol::devtls::make`, the server certificate allows client auth as well as server auth:
/// etcd 3.4's HTTP gateway (`/v3/...`) dials its own server with `--cert-file` as its client certificate, and
/// with `--client-cert-auth` a server-auth-only certificate is refused ("incompatible key usage") and every
/// gateway call answers `{"error":"connection closed","code":14}`.
pub fn make_tls(dir: &Path) -> anyhow::Result<TlsFiles> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "baton test etcd CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: &[&str], cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &issuer)?;
        Ok::<_, anyhow::Error>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        &["127.0.0.1", "localhost"],
        "baton test etcd member",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client_cert, client_key) = leaf(
        &[],
        "baton test etcd client",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    Ok(TlsFiles {
        ca: write("ca.pem", &ca_cert.pem())?,
        server_cert: write("server.pem", &server_cert)?,
        server_key: write("server-key.pem", &server_key)?,
        client_cert: write("client.pem", &client_cert)?,
        client_key: write("client-key.pem", &client_key)?,
    })
}

/// A single-member etcd cluster on the old version of `scripts/real/etcd/versions.env`, its client port
/// served over TLS only with `--client-cert-auth` (`https://127.0.0.1:PORT`, certificates from [`make_tls`]);
/// its peer port stays plain HTTP (nothing dials it). Killed and removed on drop.
pub struct TlsMember {
    root: tempfile::TempDir,
    child: std::process::Child,
    address: String,
    package: PathBuf,
    version: String,
    tls: TlsFiles,
}

impl TlsMember {
    /// Installs the etcd versions if needed, starts the member on free loopback ports and waits (20 s at most)
    /// until it answers `endpoint health` over TLS. Tries up to 3 times, as [`EtcdCluster::start`].
    pub fn start() -> anyhow::Result<TlsMember> {
        install()?;
        three_tries(Self::start_once, "the TLS etcd member")
    }

    fn start_once() -> anyhow::Result<TlsMember> {
        let versions = key_values(&std::fs::read_to_string(script("versions.env"))?);
        let version = versions
            .get("ETCD_OLD_VERSION")
            .cloned()
            .ok_or_else(|| anyhow!("versions.env has no ETCD_OLD_VERSION"))?;
        let package = workspace_root().join(".tools/etcd").join(&version);
        let root = tempfile::Builder::new()
            .prefix("baton-etcd-tls-")
            .tempdir()?;
        let tls = make_tls(&root.path().join("tls"))?;
        // Two ports the kernel hands out as free, bound at once so that they differ.
        let (client_port, peer_port) = {
            let a = std::net::TcpListener::bind("127.0.0.1:0")?;
            let b = std::net::TcpListener::bind("127.0.0.1:0")?;
            (a.local_addr()?.port(), b.local_addr()?.port())
        };
        let address = format!("127.0.0.1:{client_port}");
        let client_url = format!("https://{address}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(root.path().join("etcd.log"))?;
        let child = Command::new(package.join("bin/etcd"))
            .arg("--name=m1")
            .arg(format!("--data-dir={}", root.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=m1={peer_url}"))
            .arg(format!("--cert-file={}", tls.server_cert.display()))
            .arg(format!("--key-file={}", tls.server_key.display()))
            .arg(format!("--trusted-ca-file={}", tls.ca.display()))
            .arg("--client-cert-auth")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "could not start {} (install it: bash scripts/real/install-etcd.sh)",
                    package.join("bin/etcd").display()
                )
            })?;
        let mut member = TlsMember {
            root,
            child,
            address,
            package,
            version,
            tls,
        };
        let healthy = poll(Duration::from_secs(20), || {
            if let Ok(Some(status)) = member.child.try_wait() {
                return Some(Err(anyhow!("etcd exited ({status})")));
            }
            member.healthy().then_some(Ok(()))
        })
        .unwrap_or_else(|| {
            Err(anyhow!(
                "etcd did not answer endpoint health over TLS in 20 s"
            ))
        });
        if let Err(e) = healthy {
            let log =
                std::fs::read_to_string(member.root.path().join("etcd.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            return Err(e.context(format!(
                "the TLS etcd member (last log lines, newest first):\n{tail}"
            )));
        }
        Ok(member)
    }

    /// Its member ID in hex, as `etcdctl member list` (over TLS, with the client certificate) shows it: the
    /// cluster file's `member_id` var.
    pub fn member_id(&self) -> anyhow::Result<String> {
        let out = output(
            Command::new(self.package.join("bin/etcdctl"))
                .arg(format!("--endpoints=https://{}", self.address))
                .arg(format!("--cacert={}", self.tls.ca.display()))
                .arg(format!("--cert={}", self.tls.client_cert.display()))
                .arg(format!("--key={}", self.tls.client_key.display()))
                .args([
                    "--dial-timeout=2s",
                    "--command-timeout=5s",
                    "member",
                    "list",
                ]),
            "etcdctl member list",
        )?;
        out.split(',')
            .next()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow!("etcdctl member list printed no member ID: {out:?}"))
    }

    /// Whether `etcdctl endpoint health` over TLS, with the client certificate, says healthy.
    fn healthy(&self) -> bool {
        Command::new(self.package.join("bin/etcdctl"))
            .arg(format!("--endpoints=https://{}", self.address))
            .arg(format!("--cacert={}", self.tls.ca.display()))
            .arg(format!("--cert={}", self.tls.client_cert.display()))
            .arg(format!("--key={}", self.tls.client_key.display()))
            .args([
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "endpoint",
                "health",
            ])
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// Its client address, `127.0.0.1:PORT` (served over TLS only).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The package it runs (a directory with bin/etcd and bin/etcdctl).
    pub fn package(&self) -> &Path {
        &self.package
    }

    /// The version it runs.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn tls(&self) -> &TlsFiles {
        &self.tls
    }

    /// Its directory (data, etcd.log, tls/); a test may write its own files there.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
