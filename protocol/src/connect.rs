//! How every Baton process connects to NATS: the URL(s) and the
//! authentication and TLS settings, as one value ([`NatsConfig`]) that the
//! service, the executors and the CLI fill from the same flags and
//! environment variables.
//!
//! Supported: a creds file (JWT + nkey), an nkey seed file, user and
//! password, a token (as options, or in the URL as `nats://user:pass@host`
//! or `nats://token@host`), TLS with a CA and a client certificate. Secrets
//! never reach a log: [`NatsConfig::redacted_url`] is what processes print.

use std::path::PathBuf;

use async_nats::{ConnectOptions, ServerAddr};

use crate::error::ProtocolError;

/// NATS connection settings.
#[derive(Clone, Default)]
pub struct NatsConfig {
    /// One URL or a comma-separated list (a cluster); may carry `user:pass@` or `token@`.
    pub url: String,
    /// A creds file (JWT and nkey seed), as `nsc` writes it.
    pub creds: Option<PathBuf>,
    /// An nkey seed file (`SU...`, 0600); may be the process's Baton key.
    pub nkey: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificate(s) (PEM) to verify the server with.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that verify clients.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub cert_key: Option<PathBuf>,
    /// Refuse a connection that is not TLS (implied by `ca` or `cert`).
    pub require_tls: bool,
    /// The prefix of this process's reply subjects (async-nats's default is
    /// `_INBOX`). Baton processes use `_INBOX_<their public key>`
    /// (`subjects::inbox_prefix`): the least-privilege configuration lets each
    /// user subscribe only to its own inbox. JetStream (API requests, pull
    /// consumers, KV reads and watches, publish acks) takes its reply subjects
    /// from the same prefix.
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("creds", &self.creds)
            .field("nkey", &self.nkey)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("cert_key", &self.cert_key)
            .field("require_tls", &self.require_tls)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

/// A URL split from the credentials it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Split {
    url: String,
    user: Option<String>,
    password: Option<String>,
}

fn split_credentials(url: &str) -> Split {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u.to_string(), Some(p.to_string())),
                None => (userinfo.to_string(), None),
            };
            Split {
                url: format!("{scheme}{host}{}", &rest[authority_end..]),
                user: Some(user),
                password,
            }
        }
        None => Split {
            url: url.to_string(),
            user: None,
            password: None,
        },
    }
}

/// One URL without its credentials. Whatever else stands before an `@` (a mistyped scheme such as
/// `nats:/user:pass@host`, a second URL glued after a path) may be a password too, and is not shown.
fn redact_one(one: &str) -> String {
    // Everything before the last `@` may be a secret, however the URL is
    // mangled: only the host part after it is shown, with the scheme when
    // what precedes the `@` is plainly `scheme://userinfo`.
    let Some((before, host)) = one.rsplit_once('@') else {
        return one.to_string();
    };
    let scheme = before.split_once("://").and_then(|(scheme, userinfo)| {
        let plain_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        let plain_userinfo =
            !userinfo.contains(['/', '@']) && !userinfo.contains(char::is_whitespace);
        (plain_scheme && plain_userinfo).then_some(scheme)
    });
    match scheme {
        Some(scheme) => format!("{scheme}://***@{host}"),
        None => format!("***@{host}"),
    }
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            ..NatsConfig::default()
        }
    }

    /// These settings, with the inbox of the process whose key is
    /// `public_key` (`_INBOX_<public key>`, [`crate::subjects::inbox_prefix`])
    /// unless an inbox prefix is set already. The service and the executors
    /// connect with it, so a caller that forgot the prefix still gets the
    /// inbox the least-privilege configuration allows it.
    pub fn with_own_inbox(&self, public_key: &str) -> NatsConfig {
        NatsConfig {
            inbox_prefix: Some(
                self.inbox_prefix
                    .clone()
                    .unwrap_or_else(|| crate::subjects::inbox_prefix(public_key)),
            ),
            ..self.clone()
        }
    }

    /// The URL(s) without any credentials: what logs and errors show.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|one| redact_one(one.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether any authentication is configured.
    pub fn has_auth(&self) -> bool {
        self.creds.is_some()
            || self.nkey.is_some()
            || self.user.is_some()
            || self.token.is_some()
            || self
                .url
                .split(',')
                .any(|u| split_credentials(u.trim()).user.is_some())
    }

    /// The connect options (named `name`) and the server addresses to connect to.
    pub async fn options(
        &self,
        name: &str,
    ) -> Result<(ConnectOptions, Vec<ServerAddr>), ProtocolError> {
        let err = ProtocolError::Connect;
        let mut addrs = Vec::new();
        let mut from_url: Option<Split> = None;
        for one in self.url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let split = split_credentials(one);
            let addr: ServerAddr = split.url.parse().map_err(|e| {
                err(format!(
                    "{:?} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT): {e}",
                    redact_one(one)
                ))
            })?;
            if split.user.is_some() {
                if from_url
                    .as_ref()
                    .is_some_and(|f| (&f.user, &f.password) != (&split.user, &split.password))
                {
                    return Err(err("the URLs carry different credentials".into()));
                }
                from_url = Some(split);
            }
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err(err("no NATS URL given".into()));
        }
        let mut options = ConnectOptions::new().name(name);
        let mut methods = Vec::new();
        if let Some(path) = &self.creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| err(format!("creds file {}: {e}", path.display())))?;
            methods.push("creds");
        }
        if let Some(path) = &self.nkey {
            let identity = crate::sign::Identity::load(path)?;
            options = options.nkey(identity.seed());
            methods.push("nkey");
        }
        let user = self.user.clone().or_else(|| {
            from_url
                .as_ref()
                .filter(|f| f.password.is_some())
                .and_then(|f| f.user.clone())
        });
        let password = self
            .password
            .clone()
            .or_else(|| from_url.as_ref().and_then(|f| f.password.clone()));
        match (user, password) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(user, password);
                methods.push("user/password");
            }
            (Some(_), None) => {
                return Err(err(
                    "a NATS user needs a password (--nats-password or BATON_NATS_PASSWORD)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err("a NATS password needs a user (--nats-user)".into()))
            }
            (None, None) => {}
        }
        let token = self.token.clone().or_else(|| {
            from_url
                .as_ref()
                .filter(|f| f.password.is_none())
                .and_then(|f| f.user.clone())
        });
        if let Some(token) = token {
            options = options.token(token);
            methods.push("token");
        }
        if methods.len() > 1 {
            return Err(err(format!(
                "more than one NATS authentication method given ({}); choose one",
                methods.join(", ")
            )));
        }
        for (what, path) in [
            ("CA", &self.ca),
            ("client certificate", &self.cert),
            ("client key", &self.cert_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(err(format!(
                        "TLS {what} {} is not a readable file",
                        path.display()
                    )));
                }
            }
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone());
        }
        match (&self.cert, &self.cert_key) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone())
            }
            (None, None) => {}
            _ => {
                return Err(err(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        }
        if self.require_tls || self.ca.is_some() || self.cert.is_some() {
            options = options.require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            check_inbox_prefix(prefix)
                .map_err(|why| err(format!("inbox prefix {prefix:?} is not usable: {why}")))?;
            options = options.custom_inbox_prefix(prefix);
        }
        Ok((options, addrs))
    }
}

/// A reply-subject prefix: one or more non-empty tokens, without wildcards
/// or whitespace (async-nats appends `.<id>` to it).
fn check_inbox_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.split('.').any(str::is_empty) {
        return Err("empty token");
    }
    if prefix
        .chars()
        .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
    {
        return Err("wildcards, whitespace and control characters are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `tests/fuzz_decoders.rs` (issue 12): a mistyped scheme kept the password in what logs show.
    #[tokio::test]
    async fn a_mistyped_url_never_shows_its_password() {
        for url in [
            "nats>//user:s3cret@127.0.0.1:4222",
            "nats:/user:s3cret@h:4222",
            "nats://h:1/x\nnats://user:s3cret@h:4222",
            // Found by the 1,000,000-input fuzz run: a mangled scheme, then a second URL with a token.
            "nats:\u{FFFD}//user:s3cret@127.0.0.1:4222. tls://token@[::1]:4223/x",
            "nats://user:s3cret@h:1 tls://token@h:2",
        ] {
            let config = NatsConfig::new(url);
            assert!(config.redacted_url().starts_with("***@"), "{config:?}");
            if let Err(refused) = config.options("t").await {
                assert!(!refused.to_string().contains("s3cret"), "{refused}");
            }
        }
    }

    #[test]
    fn credentials_are_split_from_urls_and_never_shown() {
        let split = split_credentials("nats://alice:s3cret@nats.example:4222");
        assert_eq!(split.url, "nats://nats.example:4222");
        assert_eq!(split.user.as_deref(), Some("alice"));
        assert_eq!(split.password.as_deref(), Some("s3cret"));
        let token = split_credentials("tls://T0KEN@h:1");
        assert_eq!(
            (token.url.as_str(), token.user.as_deref(), token.password),
            ("tls://h:1", Some("T0KEN"), None)
        );
        let config = NatsConfig::new("nats://alice:s3cret@a:4222, nats://b:4222");
        assert_eq!(config.redacted_url(), "nats://***@a:4222,nats://b:4222");
        assert!(!format!("{config:?}").contains("s3cret"));
        let config = NatsConfig {
            password: Some("hunter2".into()),
            token: Some("tok".into()),
            ..NatsConfig::new("nats://a:1")
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok\""),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn unusable_settings_are_named() {
        let cases = [
            (NatsConfig::new("not a url at all"), "not a NATS URL"),
            (NatsConfig::new(""), "no NATS URL"),
            (
                NatsConfig {
                    user: Some("u".into()),
                    ..NatsConfig::new("nats://a:1")
                },
                "needs a password",
            ),
            (
                NatsConfig {
                    token: Some("t".into()),
                    ..NatsConfig::new("nats://u:p@a:1")
                },
                "more than one",
            ),
            (
                NatsConfig {
                    ca: Some("/nonexistent/ca.pem".into()),
                    ..NatsConfig::new("nats://a:1")
                },
                "CA",
            ),
            (
                NatsConfig {
                    cert: Some("/etc/hostname".into()),
                    ..NatsConfig::new("nats://a:1")
                },
                "needs its key",
            ),
            (
                NatsConfig {
                    inbox_prefix: Some("_INBOX.>".into()),
                    ..NatsConfig::new("nats://a:1")
                },
                "inbox prefix",
            ),
            (
                NatsConfig {
                    inbox_prefix: Some("_INBOX_U.".into()),
                    ..NatsConfig::new("nats://a:1")
                },
                "inbox prefix",
            ),
        ];
        for (config, expected) in cases {
            match config.options("t").await {
                Ok(_) => panic!("{config:?} was accepted"),
                Err(e) => assert!(e.to_string().contains(expected), "{config:?}: {e}"),
            }
        }
        assert!(NatsConfig::new("nats://u:p@a:1").options("t").await.is_ok());
        let key = crate::sign::Identity::generate().public_key();
        let own = NatsConfig {
            inbox_prefix: Some(crate::subjects::inbox_prefix(&key)),
            ..NatsConfig::new("nats://a:1")
        };
        assert!(own.options("t").await.is_ok(), "{own:?}");
    }
}
