//! `berthctl snapshots diff <a> [<b>]`: the layer of a snapshot's changes, as `ctr snapshots diff`
//! makes it. With one snapshot, its parent (a view of it) is the lower side and the snapshot
//! (its mounts if active, else a view) the upper one; with two, `a` is lower and `b` upper.
//! Everything runs under a lease (the blob goes with it unless `--keep` labels it a GC root);
//! the blob is written to stdout.

use berth_api::containerd::services::diff::v1::DiffRequest;
use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{
    Kind, MountsRequest, RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use berth_api::containerd::types::Mount;
use tonic::transport::Channel;

use super::parse_labels;
use super::snapshots::gc_root_now;
use crate::client::Conn;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The snapshot whose changes to write (the lower side when `b` is given).
    a: String,
    /// The upper side; without it, `a` against its parent.
    b: Option<String>,
    /// Media type of the layer (plain tar, tar+gzip or tar+zstd).
    #[arg(long, default_value = "application/vnd.oci.image.layer.v1.tar+gzip")]
    media_type: String,
    /// Content ingest reference to write under.
    #[arg(long = "ref")]
    r#ref: Option<String>,
    /// Keep the blob in the content store (label it a GC root).
    #[arg(long)]
    keep: bool,
    /// Labels for the blob (`key=value`).
    #[arg(long)]
    label: Vec<String>,
}

/// Removes the views a diff made, whatever happened.
struct Views {
    sn: String,
    keys: Vec<String>,
}

fn unique() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{n}-{}", std::process::id())
}

pub(crate) async fn run(conn: &Conn, sn: &str, args: Args) -> anyhow::Result<()> {
    let lease = super::job_lease(conn).await?;
    let mut views = Views {
        sn: sn.to_string(),
        keys: Vec::new(),
    };
    let result = diff(conn, sn, args, &lease, &mut views).await;
    let mut c = SnapshotsClient::new(conn.channel.clone());
    for key in views.keys.drain(..) {
        let _ = c
            .remove(conn.req(RemoveSnapshotRequest {
                snapshotter: views.sn.clone(),
                key,
            }))
            .await;
    }
    super::end_job_lease(conn, lease).await;
    result
}

/// The mounts of `key`: its own if active, else those of a new view of it.
async fn mounts_of(
    conn: &Conn,
    c: &mut SnapshotsClient<Channel>,
    sn: &str,
    key: &str,
    view_key: String,
    lease: &str,
    views: &mut Views,
) -> anyhow::Result<Vec<Mount>> {
    let info = c
        .stat(conn.req(StatSnapshotRequest {
            snapshotter: sn.to_string(),
            key: key.to_string(),
        }))
        .await?
        .into_inner()
        .info
        .unwrap_or_default();
    if info.kind == Kind::Active as i32 {
        return Ok(c
            .mounts(conn.req(MountsRequest {
                snapshotter: sn.to_string(),
                key: key.to_string(),
            }))
            .await?
            .into_inner()
            .mounts);
    }
    view(conn, c, sn, &view_key, key, lease, views).await
}

async fn view(
    conn: &Conn,
    c: &mut SnapshotsClient<Channel>,
    sn: &str,
    key: &str,
    parent: &str,
    lease: &str,
    views: &mut Views,
) -> anyhow::Result<Vec<Mount>> {
    let m = c
        .view(conn.req_lease(
            ViewSnapshotRequest {
                snapshotter: sn.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: Default::default(),
            },
            lease,
        )?)
        .await?
        .into_inner()
        .mounts;
    views.keys.push(key.to_string());
    Ok(m)
}

async fn diff(
    conn: &Conn,
    sn: &str,
    args: Args,
    lease: &str,
    views: &mut Views,
) -> anyhow::Result<()> {
    let mut labels = parse_labels(&args.label)?;
    if args.keep {
        labels.extend(gc_root_now());
    }
    let mut c = SnapshotsClient::new(conn.channel.clone());
    let (left, right) = match &args.b {
        None => {
            let info = c
                .stat(conn.req(StatSnapshotRequest {
                    snapshotter: sn.to_string(),
                    key: args.a.clone(),
                }))
                .await?
                .into_inner()
                .info
                .unwrap_or_default();
            let lower_key = format!("{}-parent-view-{}", info.parent, unique());
            let lower = view(conn, &mut c, sn, &lower_key, &info.parent, lease, views).await?;
            let upper_key = format!("{}-view-{}", args.a, unique());
            let upper = mounts_of(conn, &mut c, sn, &args.a, upper_key, lease, views).await?;
            (lower, upper)
        }
        Some(b) => {
            let ka = format!("{}-view-key", args.a);
            let left = mounts_of(conn, &mut c, sn, &args.a, ka, lease, views).await?;
            let kb = format!("{b}-view-key");
            let right = mounts_of(conn, &mut c, sn, b, kb, lease, views).await?;
            (left, right)
        }
    };
    let desc = DiffClient::new(conn.channel.clone())
        .diff(conn.req_lease(
            DiffRequest {
                left,
                right,
                media_type: args.media_type,
                r#ref: args.r#ref.unwrap_or_default(),
                labels,
                source_date_epoch: None,
            },
            lease,
        )?)
        .await?
        .into_inner()
        .diff
        .unwrap_or_default();
    super::content::write_blob(conn, desc.digest).await
}
