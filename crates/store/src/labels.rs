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
