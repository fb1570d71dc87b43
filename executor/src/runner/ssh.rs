//! Reach a node through the system `ssh` binary.
//!
//! The node's address comes only from this executor's own configuration
//! (`--nodes NAME=ADDRESS`, else the node name); a request naming an address
//! (`BATON_NODE_ADDRESS` in its env) is refused before it gets here. ssh always hands the remote
//! command to the remote user's shell, so every argv element (and `env`
//! assignment) is single-quoted: the remote shell sees exactly the argv.
//!
//! Killing the local `ssh` on a timeout does not stop the remote command by
//! itself. sshd starts every session in its own session and process group;
//! the remote script runs the command beside a watcher that waits for
//! end-of-file on ssh's stdin, which the executor holds open while the step
//! runs: when the local ssh dies, the channel closes and the watcher kills
//! the session's whole process group.

use std::collections::BTreeMap;
use std::path::PathBuf;

use protocol::StepRequest;

/// The env key that once named the node's address in a request; now refused
/// by the allow list (`crate::allow`), named here for its message.
pub const ADDRESS_ENV: &str = "BATON_NODE_ADDRESS";

/// How to call ssh.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// The ssh binary.
    pub program: PathBuf,
    /// Remote user (`-l`); default: ssh's own default.
    pub user: Option<String>,
    /// Extra `-o` options, e.g. `StrictHostKeyChecking=accept-new`, `IdentityFile=...`.
    pub options: Vec<String>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            program: "ssh".into(),
            user: None,
            options: Vec::new(),
        }
    }
}

impl SshConfig {
    /// The local argv that runs `req` on its node, at `address`, through ssh.
    pub fn wrap(&self, req: &StepRequest, address: &str) -> Result<Vec<String>, String> {
        let (host, port) = split_address(address)?;
        let mut argv = vec![
            self.program.display().to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
        ];
        for opt in &self.options {
            argv.push("-o".into());
            argv.push(opt.clone());
        }
        if let Some(port) = port {
            argv.push("-p".into());
            argv.push(port.to_string());
        }
        if let Some(user) = &self.user {
            argv.push("-l".into());
            argv.push(user.clone());
        }
        argv.push("--".into());
        argv.push(host);
        argv.push(remote_command(&req.env, &req.argv));
        Ok(argv)
    }
}

/// Split `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_address(address: &str) -> Result<(String, Option<u16>), String> {
    let bad = |why: &str| format!("node address {address:?}: {why}");
    if address.is_empty() {
        return Err(bad("empty"));
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad("unexpected text after ']'")),
        }
    } else if address.matches(':').count() == 1 {
        let (h, p) = address.split_once(':').expect("one colon");
        (h, Some(p))
    } else {
        (address, None)
    };
    if host.is_empty() || host.starts_with('-') || host.chars().any(|c| c.is_whitespace()) {
        return Err(bad("not a host name"));
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| bad("port is not a number")))
        .transpose()?;
    Ok((host.to_string(), port))
}

/// One shell word, single-quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The remote command: `exec sh -c '<script>'`, where the script runs
/// `env 'K=V'... 'argv0' 'argv1'...` in the background and a watcher kills
/// the whole process group (`kill -9 0`) if ssh's stdin reaches end-of-file
/// first. The watcher reads a copy of stdin on fd 4 because an asynchronous
/// list's own stdin is /dev/null in a shell without job control.
fn remote_command(env: &BTreeMap<String, String>, argv: &[String]) -> String {
    let mut words = Vec::new();
    if !env.is_empty() {
        words.push("env".to_string());
        for (k, v) in env {
            words.push(quote(&format!("{k}={v}")));
        }
    }
    words.extend(argv.iter().map(|a| quote(a)));
    let script = format!(
        "exec 4<&0 </dev/null; {} 4<&- & p=$!; (read -r _ <&4; kill -9 0) & w=$!; \
         exec 4<&-; wait $p; rc=$?; kill $w; exit $rc",
        words.join(" ")
    );
    format!("exec sh -c {}", quote(&script))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(env: &[(&str, &str)]) -> StepRequest {
        StepRequest {
            v: 1,
            upgrade: "U".into(),
            step: 1,
            attempt: 1,
            epoch: 1,
            node: "backend-1".into(),
            group: "pool".into(),
            action: "status".into(),
            argv: vec!["echo".into(), "it's $HOME; ok".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout_ms: 1000,
            deadline_ms: 0,
        }
    }

    #[test]
    fn wraps_argv_with_batch_mode_and_quoting() {
        let cfg = SshConfig {
            user: Some("baton".into()),
            options: vec!["StrictHostKeyChecking=no".into()],
            ..Default::default()
        };
        let argv = cfg
            .wrap(&request(&[("A", "x y")]), "10.0.0.5:2222")
            .unwrap();
        assert_eq!(
            argv,
            vec![
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-p",
                "2222",
                "-l",
                "baton",
                "--",
                "10.0.0.5",
                &remote_command(
                    &BTreeMap::from([("A".to_string(), "x y".to_string())]),
                    &["echo".to_string(), "it's $HOME; ok".to_string()],
                ),
            ]
        );
    }

    #[test]
    fn the_remote_command_gives_the_shell_exactly_the_argv_and_env() {
        // Run the remote command through a local sh, as sshd would, with
        // stdin held open like the executor does.
        let remote = remote_command(
            &BTreeMap::from([("A".to_string(), "x y".to_string())]),
            &[
                "sh".to_string(),
                "-c".to_string(),
                "printf '%s|%s\\n' \"$A\" \"$0\"; echo e >&2; exit 5".to_string(),
                "it's $HOME; ok".to_string(),
            ],
        );
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", &remote])
            // Its own group, as under sshd: the watcher may `kill -9 0`.
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _stdin = child.stdin.take();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x y|it's $HOME; ok\n");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "e\n",
            "no job-control noise"
        );
        assert_eq!(out.status.code(), Some(5));
    }

    #[test]
    fn the_address_is_the_one_given_and_must_be_a_host() {
        let cfg = SshConfig::default();
        let argv = cfg.wrap(&request(&[]), "backend-1").unwrap();
        assert_eq!(argv[argv.len() - 2], "backend-1");
        let argv = cfg.wrap(&request(&[]), "[::1]:22").unwrap();
        assert_eq!(argv[argv.len() - 2], "::1");
        // Even a request carrying an address does not change it.
        let argv = cfg
            .wrap(&request(&[(ADDRESS_ENV, "evil.example")]), "10.0.0.5")
            .unwrap();
        assert_eq!(argv[argv.len() - 2], "10.0.0.5");
        assert!(cfg.wrap(&request(&[]), "-oProxyCommand=x").is_err());
        assert!(cfg.wrap(&request(&[]), "h:notaport").is_err());
    }
}
