//! One module per sub-command.

pub(crate) mod namespaces;
pub(crate) mod plugins;
pub(crate) mod version;

use std::collections::HashMap;

/// Parses `key=value` arguments; a bare `key` means an empty value (which removes a label).
pub(crate) fn parse_labels(args: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for a in args {
        let (k, v) = a.split_once('=').unwrap_or((a.as_str(), ""));
        if k.is_empty() {
            anyhow::bail!("label {a:?}: empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `k=v,k2=v2`, sorted by key.
pub(crate) fn format_labels(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}
