//! Package versions in the `UPSTREAM-RELEASE` form of dpkg and rpm (`3.1.0-1`, `3.1.0-1.el7`): normalised and
//! ordered as numbers. System-neutral: a built-in reader reports versions in this form, the cluster file's
//! `target_version` is checked against it, and the guard orders them (a downgrade, a major change).

/// A version as numbers for comparing (`3.10.0-1` > `3.9.2-4`): the upstream parts, then the release.
pub fn version_key(version: &str) -> Option<Vec<u64>> {
    let normal = normalize_version(version)?;
    let (upstream, release) = normal.rsplit_once('-')?;
    let mut key: Vec<u64> = upstream
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    key.push(release.parse().ok()?);
    Some(key)
}

/// Normalises a package version to `UPSTREAM-RELEASE` without a dist tag: `3.1.0-1.el7` -> `3.1.0-1`.
pub fn normalize_version(text: &str) -> Option<String> {
    let text = text.trim();
    let (upstream, release) = text.rsplit_once('-')?;
    let release = release.split('.').next()?;
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let upstream_ok = upstream.split('.').all(numeric);
    if !upstream_ok || !numeric(release) {
        return None;
    }
    Some(format!("{upstream}-{release}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers() {
        let k = |v: &str| version_key(v).unwrap();
        assert!(k("3.10.0-1") > k("3.9.2-4"));
        assert!(k("3.1.0-2") > k("3.1.0-1"));
        assert!(k("3.1.0-1.el7") == k("3.1.0-1"));
        assert_eq!(k("2.4.0-1")[0], 2);
        assert_eq!(version_key("three"), None);
    }

    #[test]
    fn versions_are_normalised() {
        assert_eq!(normalize_version("3.1.0-1.el7").as_deref(), Some("3.1.0-1"));
        assert_eq!(normalize_version(" 3.1.0-1\n").as_deref(), Some("3.1.0-1"));
        assert_eq!(normalize_version("3.1-x"), None);
        assert_eq!(normalize_version("3.1.0"), None);
    }
}
