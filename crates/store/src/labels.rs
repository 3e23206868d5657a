//! Label rules shared by every labelled object.

use std::collections::HashMap;

use crate::StoreError;

/// Largest key + value, in bytes, as in containerd.
pub const MAX_LABEL_SIZE: usize = 4096;

/// Checks every label: a non-empty key, and key plus value no longer than [`MAX_LABEL_SIZE`].
pub fn validate(labels: &HashMap<String, String>) -> Result<(), StoreError> {
    for (k, v) in labels {
        check(k, v)?;
    }
    Ok(())
}

pub(crate) fn check(k: &str, v: &str) -> Result<(), StoreError> {
    if k.is_empty() {
        return Err(StoreError::InvalidArgument(
            "labels: label key must not be empty".into(),
        ));
    }
    if k.len() + v.len() > MAX_LABEL_SIZE {
        let short: String = k.chars().take(10).collect();
        return Err(StoreError::InvalidArgument(format!(
            "labels: label key and value length ({} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {short}...",
            k.len() + v.len()
        )));
    }
    Ok(())
}

/// Applies containerd's label field-mask rules to `current`: `labels` replaces all labels,
/// `labels.<key>` sets that key from `new` (or removes it when `new` has no non-empty value).
/// Paths that are not about labels are left to the caller. With no label path at all (and
/// `replace_if_unmasked`), `new` replaces everything.
pub(crate) fn apply_paths(
    current: &mut HashMap<String, String>,
    new: &HashMap<String, String>,
    paths: &[String],
    replace_if_unmasked: bool,
) {
    if paths.is_empty() {
        if replace_if_unmasked {
            *current = new.clone();
        }
        return;
    }
    for p in paths {
        if p == "labels" {
            *current = new.clone();
        } else if let Some(k) = p.strip_prefix("labels.") {
            match new.get(k) {
                Some(v) if !v.is_empty() => {
                    current.insert(k.to_string(), v.clone());
                }
                _ => {
                    current.remove(k);
                }
            }
        }
    }
}
