//! `berthctl snapshots ls|info|rm|usage|mounts|tree|prepare|view|commit|label|diff`, printing
//! what `ctr snapshots` prints.

use std::collections::HashMap;

use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use berth_api::containerd::types::Mount;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::{binary_size, format_labels, labels_mask, parse_labels, rfc3339};
use crate::client::Conn;
use crate::table::Table;

/// What `prepare` and `view` take.
#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The new snapshot.
    key: String,
    /// The committed snapshot it is made on (none: empty).
    parent: Option<String>,
    /// Print the mount commands for this target.
    #[arg(short, long)]
    target: Option<String>,
    /// Print the mounts as JSON.
    #[arg(long)]
    mounts: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Snapshotter to use.
    #[arg(
        long,
        global = true,
        env = "BERTH_SNAPSHOTTER",
        default_value = "overlayfs"
    )]
    snapshotter: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List snapshots.
    #[command(alias = "list")]
    Ls {
        /// Filters (containerd's syntax, e.g. `labels."k"==v`); an item matching any is shown.
        filters: Vec<String>,
    },
    /// Print a snapshot's info as JSON.
    Info {
        /// The snapshot.
        key: String,
    },
    /// Remove snapshots.
    #[command(alias = "del", alias = "remove", alias = "delete")]
    Rm {
        /// The snapshots.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Disk usage of snapshots (all of them without keys).
    Usage {
        /// Sizes in bytes.
        #[arg(short = 'b')]
        bytes: bool,
        /// The snapshots (all without).
        keys: Vec<String>,
    },
    /// Print the mount commands for an active snapshot or a view at `target`.
    #[command(alias = "m", alias = "mount")]
    Mounts {
        /// Where the mount commands mount it.
        target: String,
        /// The snapshot.
        key: String,
    },
    /// The snapshots as a tree of parents and children.
    Tree,
    /// Make an active snapshot on `parent` (or an empty one).
    Prepare(NewArgs),
    /// Make a read-only view of a committed snapshot (labelled a GC root, unlike ctr's views).
    View(NewArgs),
    /// Commit the active snapshot `active` as `name`.
    Commit {
        /// The committed snapshot's name.
        name: String,
        /// The active snapshot to commit.
        active: String,
    },
    /// Set (`key=value`) or remove (`key`) labels of a snapshot.
    Label {
        /// The snapshot.
        key: String,
        /// Labels: `key=value` sets one, `key` alone removes it.
        labels: Vec<String>,
    },
    /// Write the layer of `a`'s changes against `b` (default: its parent) to stdout.
    Diff(super::snapshots_diff::Args),
}

pub(crate) fn kind_name(k: i32) -> &'static str {
    match Kind::try_from(k) {
        Ok(Kind::View) => "View",
        Ok(Kind::Active) => "Active",
        Ok(Kind::Committed) => "Committed",
        _ => "Unknown",
    }
}

/// Go's RFC 3339 with nanoseconds, trailing zeros dropped (`time.Time`'s JSON form).
fn go_time(t: Option<prost_types::Timestamp>) -> String {
    let t = t.unwrap_or_default();
    let s = rfc3339(t.seconds);
    if t.nanos <= 0 {
        return s;
    }
    let frac = format!("{:09}", t.nanos);
    format!("{}.{}Z", &s[..s.len() - 1], frac.trim_end_matches('0'))
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A snapshot's info as ctr prints it (Go's `json.MarshalIndent` of `snapshots.Info`).
fn info_json(i: &Info) -> String {
    let mut out = format!(
        "{{\n    \"Kind\": {},\n    \"Name\": {}",
        json(kind_name(i.kind)),
        json(&i.name)
    );
    if !i.parent.is_empty() {
        out.push_str(&format!(",\n    \"Parent\": {}", json(&i.parent)));
    }
    if !i.labels.is_empty() {
        let mut keys: Vec<_> = i.labels.keys().collect();
        keys.sort();
        let items: Vec<String> = keys
            .iter()
            .map(|k| format!("        {}: {}", json(k), json(&i.labels[*k])))
            .collect();
        out.push_str(&format!(
            ",\n    \"Labels\": {{\n{}\n    }}",
            items.join(",\n")
        ));
    }
    out.push_str(&format!(
        ",\n    \"Created\": {},\n    \"Updated\": {}\n}}",
        json(&go_time(i.created_at)),
        json(&go_time(i.updated_at))
    ));
    out
}

fn mounts_json(mounts: &[Mount]) -> String {
    let items: Vec<String> = mounts
        .iter()
        .map(|m| {
            let opts: Vec<String> = m
                .options
                .iter()
                .map(|o| format!("            {}", json(o)))
                .collect();
            format!(
                "    {{\n        \"Type\": {},\n        \"Source\": {},\n        \"Options\": [\n{}\n        ]\n    }}",
                json(&m.r#type),
                json(&m.source),
                opts.join(",\n")
            )
        })
        .collect();
    format!("[\n{}\n]", items.join(",\n"))
}

/// `mount -t <type> <source> <target> -o <options>`, one line per mount.
/// A new snapshot's mounts: as a mount command for `target`, as JSON with `json`.
fn show_new(target: Option<String>, json: bool, m: &[Mount]) {
    if let Some(t) = target {
        print_mounts(&t, m);
    }
    if json {
        println!("{}", mounts_json(m));
    }
}

fn print_mounts(target: &str, mounts: &[Mount]) {
    for m in mounts {
        let at = if m.target.is_empty() {
            target.to_string()
        } else {
            format!(
                "{}/{}",
                target.trim_end_matches('/'),
                m.target.trim_start_matches('/')
            )
        };
        println!(
            "mount -t {} {} {} -o {}",
            m.r#type,
            m.source,
            at,
            m.options.join(",")
        );
    }
}

/// The label ctr puts on what it creates, so the collector keeps it.
pub(crate) fn gc_root_now() -> HashMap<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    HashMap::from([("containerd.io/gc.root".to_string(), rfc3339(now))])
}

/// Every snapshot of a snapshotter.
pub(crate) async fn list(
    conn: &Conn,
    c: &mut SnapshotsClient<Channel>,
    snapshotter: &str,
    filters: Vec<String>,
) -> anyhow::Result<Vec<Info>> {
    let mut stream = c
        .list(conn.req(ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters,
        }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        out.extend(batch?.info);
    }
    Ok(out)
}

fn print_tree(infos: &[Info]) {
    // Nodes in the order first seen (a parent not listed gets a placeholder), as ctr does.
    let mut order: Vec<String> = Vec::new();
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for i in infos {
        if !parent.contains_key(&i.name) {
            order.push(i.name.clone());
        }
        parent.insert(i.name.clone(), i.parent.clone());
        if !i.parent.is_empty() {
            if !parent.contains_key(&i.parent) {
                order.push(i.parent.clone());
                parent.insert(i.parent.clone(), String::new());
            }
            children
                .entry(i.parent.clone())
                .or_default()
                .push(i.name.clone());
        }
    }
    fn node(name: &str, children: &HashMap<String, Vec<String>>, level: usize, depth: usize) {
        let mut prefix = "  ".repeat(level);
        if level > 0 {
            prefix.push_str("\\_");
        }
        println!("{prefix} {name}");
        // A cycle cannot come from a snapshotter, but a bound keeps a bad answer from looping.
        if depth > 10_000 {
            return;
        }
        for c in children.get(name).into_iter().flatten() {
            node(c, children, level + 1, depth + 1);
        }
    }
    for n in &order {
        if parent.get(n).is_none_or(String::is_empty) {
            node(n, &children, 0, 0);
        }
    }
}

pub(crate) async fn run(conn: &Conn, args: Args) -> anyhow::Result<()> {
    let mut c = SnapshotsClient::new(conn.channel.clone());
    let sn = args.snapshotter;
    match args.action {
        Action::Ls { filters } => {
            let mut t = Table::new(&["KEY", "PARENT", "KIND"], 1);
            for i in list(conn, &mut c, &sn, filters).await? {
                t.row(vec![i.name, i.parent, kind_name(i.kind).to_string()]);
            }
            print!("{}", t.render());
        }
        Action::Info { key } => {
            let info = c
                .stat(conn.req(StatSnapshotRequest {
                    snapshotter: sn,
                    key,
                }))
                .await?
                .into_inner()
                .info
                .unwrap_or_default();
            println!("{}", info_json(&info));
        }
        Action::Rm { keys } => {
            for key in keys {
                c.remove(conn.req(RemoveSnapshotRequest {
                    snapshotter: sn.clone(),
                    key: key.clone(),
                }))
                .await
                .map_err(|st| anyhow::anyhow!("failed to remove {key:?}: {}", st.message()))?;
            }
        }
        Action::Usage { bytes, keys } => {
            let keys = if keys.is_empty() {
                list(conn, &mut c, &sn, Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut t = Table::new(&["KEY", "SIZE", "INODES"], 1);
            for key in keys {
                let u = c
                    .usage(conn.req(UsageRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    }))
                    .await?
                    .into_inner();
                let size = if bytes {
                    u.size.to_string()
                } else {
                    binary_size(u.size)
                };
                t.row(vec![key, size, u.inodes.to_string()]);
            }
            print!("{}", t.render());
        }
        Action::Mounts { target, key } => {
            let m = c
                .mounts(conn.req(MountsRequest {
                    snapshotter: sn,
                    key,
                }))
                .await?
                .into_inner()
                .mounts;
            print_mounts(&target, &m);
        }
        Action::Tree => print_tree(&list(conn, &mut c, &sn, Vec::new()).await?),
        Action::Prepare(a) => {
            let (snapshotter, key, parent) = (sn, a.key, a.parent.unwrap_or_default());
            let labels = gc_root_now();
            let prepare = PrepareSnapshotRequest {
                snapshotter,
                key,
                parent,
                labels,
            };
            let m = c.prepare(conn.req(prepare)).await?.into_inner().mounts;
            show_new(a.target, a.mounts, &m);
        }
        Action::View(a) => {
            let (snapshotter, key, parent) = (sn, a.key, a.parent.unwrap_or_default());
            let labels = gc_root_now();
            let view = ViewSnapshotRequest {
                snapshotter,
                key,
                parent,
                labels,
            };
            let m = c.view(conn.req(view)).await?.into_inner().mounts;
            show_new(a.target, a.mounts, &m);
        }
        Action::Commit { name, active } => {
            c.commit(conn.req(CommitSnapshotRequest {
                snapshotter: sn,
                name,
                key: active,
                labels: gc_root_now(),
                parent: String::new(),
            }))
            .await?;
        }
        Action::Label { key, labels } => {
            let labels = parse_labels(&labels)?;
            let update_mask = labels_mask(&labels);
            let info = c
                .update(conn.req(UpdateSnapshotRequest {
                    snapshotter: sn,
                    info: Some(Info {
                        name: key,
                        labels,
                        ..Default::default()
                    }),
                    update_mask,
                }))
                .await?
                .into_inner()
                .info
                .unwrap_or_default();
            println!("{}", format_labels(&info.labels));
        }
        Action::Diff(a) => super::snapshots_diff::run(conn, &sn, a).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_prints_like_ctr() {
        let i = Info {
            name: "b".into(),
            parent: "a".into(),
            kind: Kind::Committed as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 120_000_000,
            }),
            updated_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            labels: [("k".to_string(), "v\"".to_string())].into(),
        };
        assert_eq!(
            info_json(&i),
            "{\n    \"Kind\": \"Committed\",\n    \"Name\": \"b\",\n    \"Parent\": \"a\",\n    \"Labels\": {\n        \"k\": \"v\\\"\"\n    },\n    \"Created\": \"1970-01-01T00:00:00.12Z\",\n    \"Updated\": \"1970-01-01T00:00:00Z\"\n}"
        );
    }
}
