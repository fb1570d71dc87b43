//! Value parsers shared by the subcommands: an argument that cannot be right
//! is a usage error (exit code 2) before anything is sent or read.

use std::path::PathBuf;

/// An upgrade id as `submit` and `list` print it: a ULID (26 characters of
/// Crockford base32). Anything else never reaches the service.
pub fn upgrade_id(s: &str) -> Result<String, String> {
    let id = s.trim();
    match ulid::Ulid::from_string(id) {
        Ok(_) => Ok(id.to_string()),
        Err(_) => Err(format!(
            "{s:?} is not an upgrade id: upgrade ids are ULIDs (26 characters, as `baton list` shows them)"
        )),
    }
}

/// A file that must exist and be readable now (an input named on the
/// command line): a missing one is a usage error, not a failure later.
pub fn readable_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match std::fs::File::open(&path) {
        Ok(file) => match file.metadata() {
            Ok(meta) if meta.is_dir() => Err(format!("{s} is a directory, not a file")),
            _ => Ok(path),
        },
        Err(err) => Err(format!("cannot read {s}: {}", io_reason(&err))),
    }
}

/// An I/O error's reason without the `(os error N)` suffix.
fn io_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_ids_are_ulids() {
        let id = ulid::Ulid::new().to_string();
        assert_eq!(upgrade_id(&id).unwrap(), id);
        for bad in [
            "",
            "x",
            "9999",
            "01JABCDEFGHJKMNPQRSTVWXYZ",
            "a.b.c",
            &format!("{id}x"),
        ] {
            let err = upgrade_id(bad).unwrap_err();
            assert!(err.contains("is not an upgrade id"), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_and_directory_inputs_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = readable_file(missing.to_str().unwrap()).unwrap_err();
        assert!(
            err.contains("nope.toml") && err.contains("no such file"),
            "{err}"
        );
        let err = readable_file(dir.path().to_str().unwrap()).unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(readable_file(file.to_str().unwrap()).unwrap(), file);
    }
}
