//! Identifier rules, as containerd's `identifiers.Validate`: namespaces, container ids, lease ids.

use crate::StoreError;

/// Longest identifier accepted.
pub(crate) const MAX_LENGTH: usize = 76;

/// Checks `s` is a valid identifier: alphanumeric runs joined by single `.`, `_` or `-`,
/// at most [`MAX_LENGTH`] characters.
pub fn validate(s: &str) -> Result<(), StoreError> {
    if s.is_empty() {
        return Err(StoreError::InvalidArgument(
            "identifier must not be empty".into(),
        ));
    }
    if s.len() > MAX_LENGTH {
        return Err(StoreError::InvalidArgument(format!(
            "identifier {s:?} greater than maximum length ({MAX_LENGTH} characters)"
        )));
    }
    let bytes = s.as_bytes();
    let mut prev_sep = true; // the first character may not be a separator
    for &b in bytes {
        let sep = matches!(b, b'.' | b'_' | b'-');
        if sep && prev_sep || !sep && !b.is_ascii_alphanumeric() {
            return Err(invalid(s));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(invalid(s));
    }
    Ok(())
}

fn invalid(s: &str) -> StoreError {
    StoreError::InvalidArgument(format!(
        "identifier {s:?} must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
    ))
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_containerd_identifiers() {
        for ok in [
            "default",
            "k8s.io",
            "a",
            "A-b_c.d9",
            "moby",
            &"x".repeat(76),
        ] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_identifiers() {
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "..",
            "a b",
            "é",
            "a_-b",
            ".a",
            &"x".repeat(77),
            "a\0",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
