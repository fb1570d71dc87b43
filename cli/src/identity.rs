//! Who the operator is when no key names them: the login name of this
//! process's user from the system user database (getpwuid), not `$USER`,
//! which containers, cron and CI often leave unset. Used where Baton makes
//! the operator's key itself (`baton dev`); everywhere else the service
//! records the name the trust file gives the key that signed the request.

/// The login name of the real user, made a valid trust-file name (letters,
/// digits, `-`, `_`; anything else becomes `-`); `uid-N` when the user
/// database has no entry for the uid. Never empty, never "unknown".
pub fn login_name() -> String {
    let uid = nix::unistd::Uid::current();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_default();
    operator_name(&name).unwrap_or_else(|| format!("uid-{uid}"))
}

/// `name` as a trust-file operator name, or `None` if nothing usable is left.
fn operator_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_name_comes_from_the_user_database_not_the_environment() {
        let expected = nix::unistd::User::from_uid(nix::unistd::Uid::current())
            .unwrap()
            .map(|u| u.name);
        // $USER plays no part.
        let name = login_name();
        assert_ne!(name, "unknown");
        assert!(protocol::subjects::validate_token(&name).is_ok(), "{name}");
        if let Some(expected) = expected {
            assert_eq!(Some(name), operator_name(&expected));
        }
        assert_eq!(operator_name("john.doe").as_deref(), Some("john-doe"));
        assert_eq!(operator_name("..."), None);
    }
}
