//! `berthctl images ls|tag|rm|label|import|export|check` (check lives in `images_check.rs`). Import and export run client-side over the
//! containerd API, as `ctr` does: blobs through Content.Write/Read under a lease, GC labels on
//! manifests and indexes, then Images.Create.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use anyhow::Context;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest,
};
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use berth_api::containerd::types::Descriptor;
use berth_content::Digest;
use berth_image::{BlobSink, BlobSource, ExportImage, ExportOptions, ImageError, ImportOptions};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio_stream::StreamExt;

use super::ListArgs;
use super::content::ingest_blocking;
use super::{binary_size, format_labels, labels_mask, parse_labels};
use crate::client::Conn;
use crate::table::{Table, quiet_or};

mod archive;
use archive::{ApiSource, import};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Give an image another name.
    Tag {
        /// The image to name again.
        source: String,
        /// The new names.
        #[arg(required = true)]
        targets: Vec<String>,
        /// Replace a target name that exists.
        #[arg(long)]
        force: bool,
    },
    /// Remove images.
    #[command(alias = "del", alias = "remove", alias = "delete")]
    Rm {
        /// The images.
        #[arg(required = true)]
        names: Vec<String>,
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
    },
    /// Set (`key=value`) or remove (`key`) labels of an image.
    Label {
        /// The image.
        name: String,
        /// Labels: `key=value` sets one, `key` alone removes it.
        labels: Vec<String>,
    },
    /// Import an OCI image layout archive or a `docker save` archive (`-` for stdin).
    Import {
        /// The archive (`-`: standard input).
        file: String,
        /// Name images of the archive `<base-name>:<ref name>`.
        #[arg(long)]
        base_name: Option<String>,
        /// Also create an image for the archive's whole index.
        #[arg(long)]
        index_name: Option<String>,
        /// Also name images by digest.
        #[arg(long)]
        digests: bool,
        /// Only import the content; do not unpack the layers into snapshots.
        #[arg(long)]
        no_unpack: bool,
        /// Snapshotter to unpack into.
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
    },
    /// Whether each image's content is all present and unpacked for a snapshotter.
    Check {
        /// Snapshotter to check for the unpacked layers.
        #[arg(long, env = "BERTH_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
        /// Filters (containerd's syntax, e.g. `labels."k"==v`); an item matching any is shown.
        filters: Vec<String>,
    },
    /// Export images as an OCI archive (`-` for stdout).
    Export {
        /// The archive to write (`-`: standard output).
        file: String,
        /// The images to export.
        #[arg(required = true)]
        names: Vec<String>,
        /// Skip manifests of other platforms that are not in the content store.
        #[arg(long)]
        skip_missing: bool,
    },
}

pub(crate) async fn run(conn: &Conn, action: Action) -> anyhow::Result<()> {
    let mut images = ImagesClient::new(conn.channel.clone());
    match action {
        Action::Ls(ListArgs { quiet, filters }) => {
            let list = images
                .list(conn.req(ListImagesRequest { filters }))
                .await?
                .into_inner()
                .images;
            let t = Table::new(&["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"], 1);
            let Some(mut t) = quiet_or(quiet, &list, |i| &i.name, t) else {
                return Ok(());
            };
            for i in list {
                let target = i.target.clone().unwrap_or_default();
                let (size, platforms) = match describe(conn, &target).await {
                    Ok(v) => (binary_size(v.0), v.1.join(",")),
                    Err(_) => ("-".into(), "-".into()),
                };
                t.row(vec![
                    i.name,
                    target.media_type,
                    target.digest,
                    size,
                    platforms,
                    format_labels(&i.labels),
                ]);
            }
            print!("{}", t.render());
        }
        Action::Tag {
            source,
            targets,
            force,
        } => {
            let img = images
                .get(conn.req(GetImageRequest { name: source }))
                .await?
                .into_inner()
                .image
                .unwrap_or_default();
            for name in targets {
                let new = Image {
                    name: name.clone(),
                    labels: img.labels.clone(),
                    target: img.target.clone(),
                    ..Default::default()
                };
                match images
                    .create(conn.req(CreateImageRequest {
                        image: Some(new.clone()),
                        source_date_epoch: None,
                    }))
                    .await
                {
                    Ok(_) => {}
                    Err(st) if st.code() == tonic::Code::AlreadyExists && force => {
                        images
                            .update(conn.req(UpdateImageRequest {
                                image: Some(new),
                                update_mask: None,
                                source_date_epoch: None,
                            }))
                            .await?;
                    }
                    Err(st) => return Err(st.into()),
                }
                println!("{name}");
            }
        }
        Action::Rm { names, sync } => {
            let n = names.len();
            for (i, name) in names.into_iter().enumerate() {
                // Collect once, after the last removal.
                let sync = sync && i + 1 == n;
                images
                    .delete(conn.req(DeleteImageRequest {
                        name: name.clone(),
                        sync,
                        target: None,
                    }))
                    .await?;
                println!("{name}");
            }
        }
        Action::Label { name, labels } => {
            let labels = parse_labels(&labels)?;
            let update_mask = labels_mask(&labels);
            let img = images
                .update(conn.req(UpdateImageRequest {
                    image: Some(Image {
                        name,
                        labels,
                        ..Default::default()
                    }),
                    update_mask,
                    source_date_epoch: None,
                }))
                .await?
                .into_inner()
                .image
                .unwrap_or_default();
            println!("{}", format_labels(&img.labels));
        }
        Action::Import {
            file,
            base_name,
            index_name,
            digests,
            no_unpack,
            snapshotter,
        } => {
            let opts = ImportOptions {
                base_name,
                index_name,
                digests,
            };
            let unpack = (!no_unpack).then_some(snapshotter);
            import(conn, &file, opts, unpack.as_deref()).await?;
        }
        Action::Check {
            snapshotter,
            filters,
        } => super::images_check::run(conn, &snapshotter, filters).await?,
        Action::Export {
            file,
            names,
            skip_missing,
        } => {
            let mut list = Vec::new();
            for name in names {
                let img = images
                    .get(conn.req(GetImageRequest { name }))
                    .await?
                    .into_inner()
                    .image
                    .unwrap_or_default();
                let t = img.target.unwrap_or_default();
                list.push(ExportImage {
                    name: img.name,
                    target: to_image_descriptor(&t)?,
                });
            }
            let handle = Handle::current();
            let conn = conn.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let src = ApiSource { handle, conn };
                let opts = ExportOptions { skip_missing };
                if file == "-" {
                    berth_image::export(std::io::stdout().lock(), &src, &list, &opts)?;
                } else {
                    let tmp = format!("{file}.partial");
                    let out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
                    berth_image::export(out, &src, &list, &opts)?;
                    std::fs::rename(&tmp, &file)?;
                }
                Ok(())
            })
            .await??;
        }
    }
    Ok(())
}

fn to_image_descriptor(d: &Descriptor) -> anyhow::Result<berth_image::Descriptor> {
    Ok(berth_image::Descriptor {
        media_type: d.media_type.clone(),
        digest: Digest::parse(&d.digest)?,
        size: d.size,
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// Reads a whole (small) blob.
pub(crate) async fn read_blob(conn: &Conn, digest: &str) -> anyhow::Result<Vec<u8>> {
    let mut c = ContentClient::new(conn.channel.clone());
    let mut s = c
        .read(conn.req(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend(chunk?.data);
    }
    Ok(out)
}

pub(super) use berth_image::media::{is_index, is_manifest};

fn platform_string(p: &Value) -> String {
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or(""),
        p["architecture"].as_str().unwrap_or("")
    );
    if let Some(v) = p["variant"].as_str().filter(|v| !v.is_empty()) {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// The host platform, as containerd's default matcher sees it.
pub(super) fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        _ => "linux/unknown",
    }
}

/// Size of what the host platform uses of an image, and every platform it offers, as ctr shows.
async fn describe(conn: &Conn, target: &Descriptor) -> anyhow::Result<(i64, Vec<String>)> {
    let mut size = 0i64;
    let mut platforms = Vec::new();
    let mut stack = vec![(target.clone(), None::<String>)];
    while let Some((d, platform)) = stack.pop() {
        if platform
            .as_ref()
            .is_some_and(|p| !p.starts_with(host_platform()))
        {
            continue;
        }
        size += d.size;
        if is_index(&d.media_type) {
            let v: Value = serde_json::from_slice(&read_blob(conn, &d.digest).await?)?;
            for m in v["manifests"].as_array().cloned().unwrap_or_default() {
                let p = m.get("platform").map(platform_string);
                if let Some(p) = &p {
                    platforms.push(p.clone());
                }
                stack.push((json_descriptor(&m), p));
            }
        } else if is_manifest(&d.media_type) {
            let v: Value = serde_json::from_slice(&read_blob(conn, &d.digest).await?)?;
            let config = json_descriptor(&v["config"]);
            size += config.size;
            if platforms.is_empty() {
                let c: Value = serde_json::from_slice(&read_blob(conn, &config.digest).await?)?;
                platforms.push(platform_string(&c));
            }
            for l in v["layers"].as_array().cloned().unwrap_or_default() {
                size += json_descriptor(&l).size;
            }
        }
    }
    platforms.sort();
    platforms.dedup();
    Ok((size, platforms))
}

pub(super) fn json_descriptor(v: &Value) -> Descriptor {
    Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or("").to_string(),
        digest: v["digest"].as_str().unwrap_or("").to_string(),
        size: v["size"].as_i64().unwrap_or(0),
        annotations: HashMap::new(),
    }
}
