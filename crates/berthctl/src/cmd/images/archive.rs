//! `images import` and `images export` over the API, as `ctr` runs them client-side: archives read
//! and written through the content service under a lease, GC labels on manifests and indexes,
//! and imported images unpacked into snapshots.

use super::*;

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
pub(super) struct ApiSource {
    pub(super) handle: Handle,
    pub(super) conn: Conn,
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
        let update_mask = labels_mask(&labels);
        c.update(conn.req_lease(
            UpdateRequest {
                info: Some(Info {
                    digest: d.digest.clone(),
                    labels,
                    ..Default::default()
                }),
                update_mask,
            },
            lease,
        )?)
        .await?;
    }
    Ok(())
}

pub(super) async fn import(
    conn: &Conn,
    file: &str,
    opts: ImportOptions,
    unpack: Option<&str>,
) -> anyhow::Result<()> {
    let lease = crate::cmd::job_lease(conn).await?;
    let result = import_leased(conn, file, opts, &lease, unpack).await;
    // The images now hold what they need; the lease goes either way.
    crate::cmd::end_job_lease(conn, lease).await;
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
