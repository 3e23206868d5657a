//! `berthctl images check`: for each image, whether the content the host platform needs is all
//! there and whether it is unpacked for a snapshotter, as `ctr images check` reports it.

use berth_api::containerd::services::content::v1::InfoRequest;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::images::v1::ListImagesRequest;
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::snapshots::v1::StatSnapshotRequest;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::types::Descriptor;
use berth_content::Digest;
use serde_json::Value;

use super::binary_size;
use super::images::{host_platform, is_index, is_manifest, json_descriptor, read_blob};
use crate::client::Conn;
use crate::table::Table;

/// The manifest the host platform uses: the target itself, or the first host-platform entry
/// of an index (nested indexes followed). `None` if a blob on the way is missing.
async fn manifest(conn: &Conn, target: &Descriptor) -> anyhow::Result<Option<Value>> {
    let mut d = target.clone();
    for _ in 0..16 {
        let blob = match read_blob(conn, &d.digest).await {
            Ok(b) => b,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_slice(&blob)?;
        if is_manifest(&d.media_type) {
            return Ok(Some(v));
        }
        if !is_index(&d.media_type) {
            anyhow::bail!("{}: {} is not an image", d.digest, d.media_type);
        }
        let entries = v["manifests"].as_array().cloned().unwrap_or_default();
        let host = host_platform();
        let pick = entries.iter().find(|m| match m.get("platform") {
            None => true,
            Some(p) => {
                let s = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or(""),
                    p["architecture"].as_str().unwrap_or("")
                );
                s == host
            }
        });
        match pick {
            Some(m) => d = json_descriptor(m),
            None => anyhow::bail!("{}: no manifest for {host}", d.digest),
        }
    }
    anyhow::bail!("{}: indexes nested too deep", target.digest)
}

fn not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| s.code() == tonic::Code::NotFound)
}

/// containerd's chain id of a list of diff ids.
fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        chain = Digest::of(format!("{chain} {d}").as_bytes()).to_string();
    }
    Some(chain)
}

struct Checked {
    status: String,
    size: String,
    complete: bool,
    manifest: Option<Value>,
}

async fn check_one(conn: &Conn, target: &Descriptor) -> anyhow::Result<Checked> {
    let Some(m) = manifest(conn, target).await? else {
        return Ok(Checked {
            status: "unavailable (0/?)".into(),
            size: format!("{}/?", binary_size(0)),
            complete: false,
            manifest: None,
        });
    };
    let mut required = vec![json_descriptor(&m["config"])];
    required.extend(
        m["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(json_descriptor),
    );
    let mut c = ContentClient::new(conn.channel.clone());
    let (mut present, mut present_size, mut required_size) = (0, 0, 0);
    for d in &required {
        required_size += d.size;
        match c
            .info(conn.req(InfoRequest {
                digest: d.digest.clone(),
            }))
            .await
        {
            Ok(_) => {
                present += 1;
                present_size += d.size;
            }
            Err(st) if st.code() == tonic::Code::NotFound => {}
            Err(st) => return Err(st.into()),
        }
    }
    let complete = present == required.len();
    let word = if complete { "complete" } else { "incomplete" };
    Ok(Checked {
        status: format!("{word} ({present}/{})", required.len()),
        size: format!(
            "{}/{}",
            binary_size(present_size),
            binary_size(required_size)
        ),
        complete,
        manifest: Some(m),
    })
}

/// Whether the chain id of the image's layers is a snapshot of `snapshotter`.
async fn unpacked(conn: &Conn, snapshotter: &str, manifest: &Value) -> anyhow::Result<bool> {
    let config = json_descriptor(&manifest["config"]);
    let config: Value = serde_json::from_slice(&read_blob(conn, &config.digest).await?)?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let Some(chain) = chain_id(&diff_ids) else {
        return Ok(false);
    };
    match SnapshotsClient::new(conn.channel.clone())
        .stat(conn.req(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: chain,
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(st) if st.code() == tonic::Code::NotFound => Ok(false),
        Err(st) => Err(st.into()),
    }
}

pub(crate) async fn run(
    conn: &Conn,
    snapshotter: &str,
    filters: Vec<String>,
) -> anyhow::Result<()> {
    let list = ImagesClient::new(conn.channel.clone())
        .list(conn.req(ListImagesRequest { filters }))
        .await?
        .into_inner()
        .images;
    let mut t = Table::new(&["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"], 1);
    let mut first_error = None;
    for img in list {
        let target = img.target.clone().unwrap_or_default();
        let (status, size, unpacked) = match check_one(conn, &target).await {
            Ok(ch) => {
                let u = match (&ch.manifest, ch.complete) {
                    (Some(m), true) => unpacked(conn, snapshotter, m).await?,
                    _ => false,
                };
                (ch.status, ch.size, u)
            }
            Err(e) => {
                let e = crate::describe(&e);
                eprintln!("berthctl: unable to check {}: {e}", img.name);
                first_error.get_or_insert_with(|| format!("unable to check {}: {e}", img.name));
                ("error".to_string(), "-".to_string(), false)
            }
        };
        t.row(vec![
            img.name,
            target.media_type,
            target.digest,
            status,
            size,
            unpacked.to_string(),
        ]);
    }
    // ctr ends the header's last cell with a tab (padded) and the rows' without (not padded).
    for (i, line) in t.render().lines().enumerate() {
        println!("{}", if i == 0 { line } else { line.trim_end() });
    }
    match first_error {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::chain_id;

    #[test]
    fn chain_ids_like_containerd() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]),
            Some(berth_content::Digest::of(format!("{a} {b}").as_bytes()).to_string())
        );
        assert_eq!(chain_id(&[]), None);
    }
}
