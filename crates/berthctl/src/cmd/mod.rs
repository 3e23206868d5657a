//! One module per sub-command.

pub(crate) mod containers;
pub(crate) mod content;
pub(crate) mod events;
pub(crate) mod images;
pub(crate) mod images_check;
pub(crate) mod leases;
pub(crate) mod namespaces;
pub(crate) mod plugins;
pub(crate) mod pull;
pub(crate) mod run;
pub(crate) mod snapshots;
pub(crate) mod snapshots_diff;
pub(crate) mod version;

use std::collections::HashMap;

/// What every `ls` of records takes.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Print only the first column (the id, name or digest).
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Filters (containerd's syntax, e.g. `labels."k"==v`); an item matching any is shown.
    pub(crate) filters: Vec<String>,
}

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
/// An update of `labels` alone: the mask naming each of them.
pub(crate) fn labels_mask(labels: &HashMap<String, String>) -> Option<prost_types::FieldMask> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    Some(prost_types::FieldMask { paths })
}

pub(crate) fn format_labels(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Sizes as ctr prints them (decimal units, like docker's `units.HumanSize`).
pub(crate) fn human_size(n: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    // Go's %.4g: four significant digits, trailing zeros dropped.
    let int_digits = if v < 1.0 {
        1
    } else {
        (v.log10().floor() as usize) + 1
    };
    let s = format!("{v:.*}", 4usize.saturating_sub(int_digits));
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[i])
}

/// `1.2 MiB`, as ctr prints sizes of images and snapshots (containerd's `progress.Bytes`).
pub(crate) fn binary_size(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// How long ago, roughly, as `12 seconds`, `3 minutes`, `2 hours`, `5 days`.
pub(crate) fn age(t: Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let s = (now - t.seconds).max(0);
    match s {
        0..=59 => format!("{s} seconds"),
        60..=3599 => format!("{} minutes", s / 60),
        3600..=86_399 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// A lease for a client-side job (an import, a diff) that ends with it: 24 hours of life in
/// case the client dies before deleting it, as `ctr` leases.
pub(crate) async fn job_lease(conn: &crate::client::Conn) -> anyhow::Result<String> {
    use berth_api::containerd::services::leases::v1::{CreateRequest, leases_client::LeasesClient};
    let expire = std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600);
    let expire = berth_runtime::time::rfc3339_secs(expire);
    Ok(LeasesClient::new(conn.channel.clone())
        .create(conn.req(CreateRequest {
            id: String::new(),
            labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
        }))
        .await?
        .into_inner()
        .lease
        .unwrap_or_default()
        .id)
}

/// Ends a [`job_lease`] (what the job made is held by its records now, or goes with it).
pub(crate) async fn end_job_lease(conn: &crate::client::Conn, lease: String) {
    use berth_api::containerd::services::leases::v1::{DeleteRequest, leases_client::LeasesClient};
    let _ = LeasesClient::new(conn.channel.clone())
        .delete(conn.req(DeleteRequest {
            id: lease,
            sync: false,
        }))
        .await;
}

/// Seconds since the epoch as RFC 3339 UTC (`2006-01-02T15:04:05Z`).
pub(crate) fn rfc3339(secs: i64) -> String {
    berth_runtime::time::rfc3339(secs, 0)
}

/// As [`rfc3339`], with nine digits of nanoseconds.
pub(crate) fn rfc3339_nanos(secs: i64, nanos: i32) -> String {
    berth_runtime::time::rfc3339_fixed(secs, nanos.max(0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_print_like_ctr() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_257_894_000), "2009-11-10T23:00:00Z");
    }
}
