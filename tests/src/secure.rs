//! An authenticated deployment for one test ([`Secure`]): a key per process
//! (service, one executor per group, three operators, and an outsider in no
//! role), the trust file naming them, and TLS files (a CA, a server
//! certificate for `127.0.0.1` and `localhost`, a client certificate), all in
//! a temporary directory. [`crate::NatsServer::start_secured`] runs a
//! nats-server configured from it by `protocol::natsconf::render`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use protocol::connect::NatsConfig;
use protocol::natsconf::TlsFiles;
use protocol::sign::{ExecutorPeer, Identity, OperatorPeer, Peer, Role, Trust};
use tempfile::TempDir;

/// The operators every fixture has, with their roles.
pub const OPERATORS: [(&str, Role); 3] = [
    ("alice", Role::Approver),
    ("oscar", Role::Operator),
    ("rita", Role::Reader),
];

/// Keys, trust file and TLS files of an authenticated deployment.
pub struct Secure {
    pub dir: TempDir,
    pub trust_path: PathBuf,
    pub trust: Trust,
    pub service_key: PathBuf,
    /// By group; each executor is named after its group.
    pub executor_keys: BTreeMap<String, PathBuf>,
    /// By name: "alice" approver, "oscar" operator, "rita" reader.
    pub operator_keys: BTreeMap<String, PathBuf>,
    /// A valid user key in no role: not in the trust file, not a NATS user.
    pub outsider_key: PathBuf,
    /// The server's certificate and key, and the CA that signed every certificate.
    pub tls: TlsFiles,
    /// A client certificate signed by the CA, and its key (shared by every client).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl std::fmt::Debug for Secure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secure")
            .field("dir", &self.dir.path())
            .field("executors", &self.executor_keys.keys())
            .finish_non_exhaustive()
    }
}

impl Secure {
    /// A deployment with one executor per group in `groups`.
    pub fn new(groups: &[&str]) -> anyhow::Result<Secure> {
        let dir = tempfile::Builder::new()
            .prefix("baton-secure-")
            .tempdir()
            .context("could not create the keys dir")?;
        let key = |name: &str| -> anyhow::Result<(PathBuf, String)> {
            let path = dir.path().join(format!("{name}.seed"));
            let identity = Identity::generate();
            identity.write_seed(&path)?;
            Ok((path, identity.public_key()))
        };
        let (service_key, service_public) = key("service")?;
        let mut executor_keys = BTreeMap::new();
        let mut executors = Vec::new();
        for group in groups {
            let (path, public) = key(&format!("executor-{group}"))?;
            executor_keys.insert(group.to_string(), path);
            executors.push(ExecutorPeer {
                name: group.to_string(),
                key: public,
                group: group.to_string(),
            });
        }
        let mut operator_keys = BTreeMap::new();
        let mut operators = Vec::new();
        for (name, role) in OPERATORS {
            let (path, public) = key(&format!("operator-{name}"))?;
            operator_keys.insert(name.to_string(), path);
            operators.push(OperatorPeer {
                name: name.to_string(),
                key: public,
                role,
            });
        }
        let (outsider_key, _) = key("outsider")?;
        let trust = Trust {
            service: Peer {
                name: "baton-service".into(),
                key: service_public,
            },
            executors,
            operators,
        };
        let trust_path = dir.path().join("trust.toml");
        std::fs::write(&trust_path, trust.to_toml()).context("could not write the trust file")?;
        let certs = protocol::devtls::make(dir.path(), &[])?;
        Ok(Secure {
            trust_path,
            trust,
            service_key,
            executor_keys,
            operator_keys,
            outsider_key,
            tls: certs.server,
            client_cert: certs.client_cert,
            client_key: certs.client_key,
            dir,
        })
    }

    /// The key of the executor of `group` (panics if the fixture has none).
    pub fn executor_key(&self, group: &str) -> &Path {
        self.executor_keys
            .get(group)
            .unwrap_or_else(|| panic!("the fixture has no executor of group {group}"))
    }

    /// The key of operator `name` (panics if the fixture has none).
    pub fn operator_key(&self, name: &str) -> &Path {
        self.operator_keys
            .get(name)
            .unwrap_or_else(|| panic!("the fixture has no operator {name}"))
    }

    /// The identity in the key file `key`.
    pub fn identity(&self, key: &Path) -> Identity {
        Identity::load(key).unwrap_or_else(|e| panic!("fixture key {}: {e}", key.display()))
    }

    /// Environment variables that make a `baton` process use `key` for
    /// signing and for NATS (nkey), over TLS with the client certificate.
    pub fn env_for(&self, key: &Path) -> Vec<(String, String)> {
        let mut env = self.env_signing_only(key);
        for (name, path) in [
            ("BATON_NATS_NKEY", key),
            ("BATON_NATS_CA", &self.tls.ca),
            ("BATON_NATS_CERT", &self.client_cert),
            ("BATON_NATS_CERT_KEY", &self.client_key),
        ] {
            env.push((name.to_string(), path.display().to_string()));
        }
        env
    }

    /// Only `BATON_KEY` and `BATON_TRUST`: for a nats-server without auth,
    /// with signatures still on.
    pub fn env_signing_only(&self, key: &Path) -> Vec<(String, String)> {
        vec![
            ("BATON_KEY".to_string(), key.display().to_string()),
            (
                "BATON_TRUST".to_string(),
                self.trust_path.display().to_string(),
            ),
        ]
    }

    /// Settings for `url` authenticating with `key` (`None`: no
    /// authentication), over TLS with the client certificate, with the
    /// key's own inbox (`_INBOX_<public key>`) as a Baton process has it.
    pub fn nats_config(&self, url: &str, key: Option<&Path>) -> NatsConfig {
        NatsConfig {
            nkey: key.map(Path::to_path_buf),
            inbox_prefix: key
                .map(|k| protocol::subjects::inbox_prefix(&self.identity(k).public_key())),
            ca: Some(self.tls.ca.clone()),
            cert: Some(self.client_cert.clone()),
            cert_key: Some(self.client_key.clone()),
            require_tls: true,
            ..NatsConfig::new(url)
        }
    }

    /// Connect to `url` with `key` (see [`Secure::nats_config`]).
    pub async fn connect(
        &self,
        url: &str,
        key: Option<&Path>,
    ) -> anyhow::Result<async_nats::Client> {
        connect_config(&self.nats_config(url, key), None).await
    }

    /// [`Secure::connect`], also collecting the `-ERR`s the server sends
    /// this connection (permission violations).
    pub async fn connect_watched(
        &self,
        url: &str,
        key: Option<&Path>,
    ) -> anyhow::Result<(async_nats::Client, ServerErrors)> {
        let errors = ServerErrors::default();
        let client = connect_config(&self.nats_config(url, key), Some(errors.clone())).await?;
        Ok((client, errors))
    }
}

/// Connect with `config`, once (no retries: a refused connection is an
/// error), forwarding the server's errors to `errors`.
pub async fn connect_config(
    config: &NatsConfig,
    errors: Option<ServerErrors>,
) -> anyhow::Result<async_nats::Client> {
    let (mut options, addrs) = config.options("baton-test").await?;
    options = options.connection_timeout(Duration::from_secs(5));
    if let Some(errors) = errors {
        options = options.event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    errors.push(e.to_string());
                }
            }
        });
    }
    Ok(options.connect(addrs).await?)
}

/// The errors a server sent one connection, e.g.
/// `nats: permissions violation for publish to "baton.step.g1"`.
#[derive(Debug, Clone, Default)]
pub struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    fn push(&self, error: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(error);
    }

    /// Every error so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether an error containing `needle` (case-insensitive) arrives
    /// within `timeout`.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let needle = needle.to_lowercase();
        crate::wait_until(timeout, || {
            self.all()
                .iter()
                .any(|e| e.to_lowercase().contains(&needle))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_has_every_role_and_a_trust_file_that_loads() {
        let secure = Secure::new(&["g1", "g2"]).unwrap();
        let trust = Trust::load(&secure.trust_path).unwrap();
        assert_eq!(trust, secure.trust);
        let public = |key: &Path| secure.identity(key).public_key();
        assert!(trust.is_service(&public(&secure.service_key)));
        assert_eq!(
            trust
                .executor(&public(secure.executor_key("g2")))
                .unwrap()
                .group,
            "g2"
        );
        assert_eq!(
            trust
                .operator(&public(secure.operator_key("rita")))
                .unwrap()
                .role,
            Role::Reader
        );
        let outsider = public(&secure.outsider_key);
        assert!(
            !trust.is_service(&outsider)
                && trust.executor(&outsider).is_none()
                && trust.operator(&outsider).is_none()
        );
        let env = secure.env_for(&secure.service_key);
        assert_eq!(env.len(), 6);
        assert!(env
            .iter()
            .any(|(k, v)| k == "BATON_NATS_NKEY" && Path::new(v) == secure.service_key));
        for path in [&secure.tls.ca, &secure.tls.cert, &secure.client_key] {
            assert!(std::fs::read_to_string(path)
                .unwrap()
                .starts_with("-----BEGIN"));
        }
    }
}
