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
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use berth_api::containerd::types::Descriptor;
use berth_content::Digest;
use berth_image::{BlobSink, BlobSource, ExportImage, ExportOptions, ImageError, ImportOptions};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio_stream::StreamExt;

use super::content::ingest_blocking;
use super::{binary_size, format_labels, parse_labels};
use crate::client::Conn;
use crate::table::Table;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print only names.
        #[arg(short, long)]
        quiet: bool,
        /// Filters (containerd's syntax, e.g. `labels."k"==v`); an item matching any is shown.
        filters: Vec<String>,
    },
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
        Action::Ls { quiet, filters } => {
            let list = images
                .list(conn.req(ListImagesRequest { filters }))
                .await?
                .into_inner()
                .images;
            if quiet {
                for i in list {
                    println!("{}", i.name);
                }
                return Ok(());
            }
            let mut t = Table::new(&["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"], 1);
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
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let img = images
                .update(conn.req(UpdateImageRequest {
                    image: Some(Image {
                        name,
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
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

/// Writes blobs through Content.Write under the import's lease.
struct ApiSink {
    handle: Handle,
    conn: Conn,
    lease: String,
    seq: usize,
}

impl BlobSink for ApiSink {
    fn has(&mut self, d: &Digest) -> bool {
        let mut c = ContentClient::new(self.conn.channel.clone());
        self.handle
            .block_on(c.info(self.conn.req(InfoRequest {
                digest: d.to_string(),
            })))
            .is_ok()
    }

    fn put(
        &mut self,
        expected: Option<&Digest>,
        r: &mut dyn Read,
    ) -> Result<(Digest, u64), ImageError> {
        self.seq += 1;
        let r#ref = match expected {
            Some(d) => format!("import-{d}"),
            None => format!("import-{}-{}", self.lease, self.seq),
        };
        let exp = expected.map(|d| d.to_string()).unwrap_or_default();
        let (d, size) = ingest_blocking(
            &self.handle,
            &self.conn,
            &r#ref,
            Some(&self.lease),
            0,
            &exp,
            r,
        )
        .map_err(|e| ImageError::Io(std::io::Error::other(format!("{e:#}"))))?;
        let d = Digest::parse(&d)?;
        if let Some(e) = expected.filter(|e| **e != d) {
            return Err(ImageError::DigestMismatch {
                expected: e.clone(),
                actual: d,
            });
        }
        Ok((d, size as u64))
    }
}

/// Reads blobs through Content.Info and Content.Read.
struct ApiSource {
    handle: Handle,
    conn: Conn,
}

struct ApiReader {
    handle: Handle,
    stream: tonic::Streaming<berth_api::containerd::services::content::v1::ReadContentResponse>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ApiReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.buf = chunk.data;
                    self.pos = 0;
                }
                Some(Err(st)) => return Err(std::io::Error::other(st.message().to_string())),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn not_found(d: &Digest, st: tonic::Status) -> ImageError {
    if st.code() == tonic::Code::NotFound {
        ImageError::NotFound(format!("content {d}"))
    } else {
        ImageError::Io(std::io::Error::other(st.message().to_string()))
    }
}

impl BlobSource for ApiSource {
    fn size(&self, d: &Digest) -> Result<u64, ImageError> {
        let mut c = ContentClient::new(self.conn.channel.clone());
        let info = self
            .handle
            .block_on(c.info(self.conn.req(InfoRequest {
                digest: d.to_string(),
            })))
            .map_err(|st| not_found(d, st))?;
        Ok(info.into_inner().info.unwrap_or_default().size as u64)
    }

    fn open(&self, d: &Digest) -> Result<Box<dyn Read + '_>, ImageError> {
        let mut c = ContentClient::new(self.conn.channel.clone());
        let stream = self
            .handle
            .block_on(c.read(self.conn.req(ReadContentRequest {
                digest: d.to_string(),
                offset: 0,
                size: 0,
            })))
            .map_err(|st| not_found(d, st))?
            .into_inner();
        Ok(Box::new(ApiReader {
            handle: self.handle.clone(),
            stream,
            buf: Vec::new(),
            pos: 0,
        }))
    }
}

/// Puts containerd's GC reference labels on manifests and indexes, so that an image keeps
/// everything it needs once the import's lease is gone.
async fn label_children(conn: &Conn, lease: &str, target: &Descriptor) -> anyhow::Result<()> {
    let mut c = ContentClient::new(conn.channel.clone());
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        let mut labels = HashMap::new();
        if is_index(&d.media_type) {
            let v: Value = serde_json::from_slice(&read_blob(conn, &d.digest).await?)?;
            for (i, m) in v["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let child = json_descriptor(m);
                labels.insert(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    child.digest.clone(),
                );
                if c.info(conn.req(InfoRequest {
                    digest: child.digest.clone(),
                }))
                .await
                .is_ok()
                {
                    stack.push(child);
                }
            }
        } else if is_manifest(&d.media_type) {
            let v: Value = serde_json::from_slice(&read_blob(conn, &d.digest).await?)?;
            labels.insert(
                "containerd.io/gc.ref.content.config".into(),
                json_descriptor(&v["config"]).digest,
            );
            for (i, l) in v["layers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    json_descriptor(l).digest,
                );
            }
        } else {
            continue;
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        c.update(conn.req_lease(
            UpdateRequest {
                info: Some(Info {
                    digest: d.digest.clone(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
            lease,
        )?)
        .await?;
    }
    Ok(())
}

async fn import(
    conn: &Conn,
    file: &str,
    opts: ImportOptions,
    unpack: Option<&str>,
) -> anyhow::Result<()> {
    let mut leases = LeasesClient::new(conn.channel.clone());
    let expire = std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600);
    let expire = super::rfc3339(expire.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64);
    let lease = leases
        .create(conn.req(CreateRequest {
            id: String::new(),
            labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
        }))
        .await?
        .into_inner()
        .lease
        .unwrap_or_default()
        .id;
    let result = import_leased(conn, file, opts, &lease, unpack).await;
    // The images now hold what they need; the lease goes either way.
    let _ = leases
        .delete(conn.req(DeleteRequest {
            id: lease,
            sync: false,
        }))
        .await;
    result
}

async fn import_leased(
    conn: &Conn,
    file: &str,
    opts: ImportOptions,
    lease: &str,
    unpack: Option<&str>,
) -> anyhow::Result<()> {
    let handle = Handle::current();
    let (c2, l2, f2) = (conn.clone(), lease.to_string(), file.to_string());
    let imported =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<berth_image::ImportedImage>> {
            let mut sink = ApiSink {
                handle,
                conn: c2,
                lease: l2,
                seq: 0,
            };
            let input: Box<dyn Read> = if f2 == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&f2).map_err(|e| anyhow::anyhow!("{f2}: {e}"))?,
                ))
            };
            Ok(berth_image::import(input, &mut sink, &opts)?)
        })
        .await??;
    let mut images = ImagesClient::new(conn.channel.clone());
    for img in imported {
        let target = Descriptor {
            media_type: img.target.media_type.clone(),
            digest: img.target.digest.to_string(),
            size: img.target.size,
            annotations: img
                .target
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        label_children(conn, lease, &target).await?;
        let record = Image {
            name: img.name.clone(),
            target: Some(target),
            ..Default::default()
        };
        match images
            .create(conn.req_lease(
                CreateImageRequest {
                    image: Some(record.clone()),
                    source_date_epoch: None,
                },
                lease,
            )?)
            .await
        {
            Ok(_) => {}
            Err(st) if st.code() == tonic::Code::AlreadyExists => {
                images
                    .update(conn.req(UpdateImageRequest {
                        image: Some(record),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await?;
            }
            Err(st) => return Err(st.into()),
        }
        if let Some(sn) = unpack {
            unpack_image(conn, lease, &img.target, sn)
                .await
                .with_context(|| format!("unpacking {}", img.name))?;
        }
        println!("{} {}", img.name, img.target.digest);
    }
    Ok(())
}

/// Unpacks an imported image into `snapshotter` over the API, as ctr does: for each layer whose
/// chain id is not yet a snapshot, Prepare over the one below, Diff.Apply, Commit as the chain
/// id; then the labels containerd sets (`containerd.io/uncompressed` on layers,
/// `containerd.io/gc.ref.snapshot.<snapshotter>` on the config).
async fn unpack_image(
    conn: &Conn,
    lease: &str,
    target: &berth_image::Descriptor,
    snapshotter: &str,
) -> anyhow::Result<()> {
    use berth_api::containerd::services::diff::v1::ApplyRequest;
    use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
    use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
    use berth_api::containerd::services::snapshots::v1::{
        CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    };
    use berth_image::media::{
        PlatformSpec, chain_ids, config_diff_ids, manifest_parts, select_manifest,
    };

    let mut manifest = target.digest.to_string();
    if is_index(&target.media_type) {
        let index = read_blob(conn, &manifest).await?;
        let m = select_manifest(&index, &PlatformSpec::host())?
            .context("no manifest for this platform in the index")?;
        manifest = m.digest.to_string();
    }
    let (config, layers) = manifest_parts(&read_blob(conn, &manifest).await?)?;
    let diff_ids = config_diff_ids(&read_blob(conn, config.digest.as_str()).await?)?;
    anyhow::ensure!(
        diff_ids.len() == layers.len(),
        "the config lists {} diff ids for {} layers",
        diff_ids.len(),
        layers.len()
    );
    let chain = chain_ids(&diff_ids);
    let mut snaps = SnapshotsClient::new(conn.channel.clone());
    let mut diff = DiffClient::new(conn.channel.clone());
    let mut content = ContentClient::new(conn.channel.clone());
    for (i, layer) in layers.iter().enumerate() {
        let name = chain[i].to_string();
        let stat = snaps
            .stat(conn.req(StatSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: name.clone(),
            }))
            .await;
        match stat {
            Ok(_) => continue,
            Err(st) if st.code() == tonic::Code::NotFound => {}
            Err(st) => return Err(st.into()),
        }
        let key = format!("extract-{}-{i} {name}", std::process::id());
        let labels = std::collections::HashMap::from([(
            "containerd.io/snapshot.ref".to_string(),
            name.clone(),
        )]);
        let mounts = snaps
            .prepare(conn.req_lease(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                    parent: if i == 0 {
                        String::new()
                    } else {
                        chain[i - 1].to_string()
                    },
                    labels: labels.clone(),
                },
                lease,
            )?)
            .await?
            .into_inner()
            .mounts;
        let applied = diff
            .apply(conn.req_lease(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.to_string(),
                        size: layer.size,
                        annotations: Default::default(),
                    }),
                    mounts,
                    payloads: Default::default(),
                    sync_fs: false,
                },
                lease,
            )?)
            .await;
        let ok = match &applied {
            Ok(r) => r
                .get_ref()
                .applied
                .as_ref()
                .is_some_and(|d| d.digest == diff_ids[i].as_str()),
            Err(_) => false,
        };
        if !ok {
            let _ = snaps
                .remove(conn.req(RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key,
                }))
                .await;
            applied?;
            anyhow::bail!(
                "layer {}: its content does not match the config's diff id {}",
                layer.digest,
                diff_ids[i]
            );
        }
        snaps
            .commit(conn.req_lease(
                CommitSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    name: name.clone(),
                    key,
                    labels,
                    parent: String::new(),
                },
                lease,
            )?)
            .await?;
        content
            .update(conn.req(UpdateRequest {
                info: Some(Info {
                    digest: layer.digest.to_string(),
                    labels: std::collections::HashMap::from([(
                        "containerd.io/uncompressed".to_string(),
                        diff_ids[i].to_string(),
                    )]),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.containerd.io/uncompressed".into()],
                }),
            }))
            .await?;
    }
    if let Some(top) = chain.last() {
        let key = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
        content
            .update(conn.req(UpdateRequest {
                info: Some(Info {
                    digest: config.digest.to_string(),
                    labels: std::collections::HashMap::from([(key.clone(), top.to_string())]),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![format!("labels.{key}")],
                }),
            }))
            .await?;
    }
    Ok(())
}
