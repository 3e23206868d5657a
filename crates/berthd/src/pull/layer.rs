//! A layer's pull: download (resumed with Range requests), decompression and apply into its
//! snapshot in one pass, the content record, and the commit once the diff id matched.

use super::*;
use berth_store::Sharing;

/// Reads chunks from a channel as a byte stream (end of channel = end of stream).
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

enum Chunk {
    Data(Bytes),
    End,
}

/// One layer's job.
pub(super) struct Layer {
    pub(super) desc: ImgDesc,
    pub(super) diff_id: Digest,
    pub(super) chain: Digest,
    pub(super) parent: Option<Digest>,
    /// Becomes true when the layer below is committed (sender dropped = it failed).
    pub(super) below: Option<watch::Receiver<bool>>,
    pub(super) done: watch::Sender<bool>,
}

impl Puller {
    pub(super) async fn layer(&self, ctx: &Ctx, job: Layer) -> Result<(), PullError> {
        let Layer {
            desc,
            diff_id,
            chain,
            parent,
            below,
            done,
        } = job;
        let name = desc.digest.to_string();
        let ns = &ctx.ns;
        let flight_key = format!(
            "{ns}/{}/{chain}/{}",
            ctx.snapshotter.as_deref().unwrap_or("-"),
            desc.digest
        );
        ctx.progress
            .send("waiting", &name, 0, desc.size, Some(&desc));
        // Another pull of the same layer: wait for it, then see what is left to do.
        let _flight = loop {
            if let Some(f) = self.join_flight(flight_key.clone()).await {
                break f;
            }
        };
        let has_content = self.store.content_info(ns, &desc.digest).is_ok();
        let has_snapshot = ctx
            .snapshotter
            .as_deref()
            .is_some_and(|sn| self.has_snapshot(ns, sn, chain.as_str()));
        if has_content {
            self.hold(ctx, "content", desc.digest.as_str())?;
        }
        let Some(sn) = ctx.snapshotter.clone().filter(|_| !has_snapshot) else {
            if !has_content {
                let _permit = ctx.permits.acquire().await;
                self.download(ctx, &desc, None).await?;
            } else {
                ctx.progress
                    .send("exists", &name, desc.size, desc.size, Some(&desc));
            }
            if let Some(sn) = &ctx.snapshotter {
                self.hold(ctx, &format!("snapshots/{sn}"), chain.as_str())?;
            }
            let _ = done.send(true);
            return Ok(());
        };

        let independent = self
            .store
            .snapshotter(&sn)
            .map_err(PullError::Store)?
            .independent_layers();
        // Written straight into the upper directory, as containerd's overlay applier does.
        let whiteouts = Whiteouts::Overlay;
        let key = format!(
            "extract-{} {chain}",
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..12)
                .unwrap_or("0")
        );
        let snap_labels = HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain.to_string())]);
        let mut applied_ok = false;
        if independent {
            let permit = ctx.permits.acquire().await;
            self.store
                .prepare_snapshot(
                    ns,
                    &sn,
                    NewSnapshot {
                        key: &key,
                        parent: "",
                        kind: SnapshotKind::Active,
                        labels: snap_labels.clone(),
                        lease: Some(&ctx.lease),
                    },
                )
                .map_err(PullError::Store)?;
            let dir = self
                .store
                .snapshot_dir(ns, &sn, &key)
                .map_err(PullError::Store)?;
            let applied = if has_content {
                ctx.progress
                    .send("unpacking", &name, 0, desc.size, Some(&desc));
                Some(self.apply_from_store(ns, &desc, dir, whiteouts).await)
            } else {
                self.download(ctx, &desc, Some((dir, whiteouts))).await?
            };
            drop(permit);
            match applied {
                Some(Ok(a)) => {
                    check_diff_id(&desc, &a.digest, &diff_id)?;
                    applied_ok = true;
                }
                Some(Err(berth_image::ImageError::NeedsLowerLayers(why))) => {
                    tracing::debug!(layer = %desc.digest, %why, "applying onto the mounted parent");
                }
                Some(Err(e)) => {
                    let _ = self.store.remove_snapshot(ns, &sn, &key);
                    return Err(PullError::Image(
                        format!("layer {}", desc.digest).to_string(),
                        e,
                    ));
                }
                // Resumed download: the stream did not start at 0; apply from the store.
                None => {
                    ctx.progress
                        .send("unpacking", &name, 0, desc.size, Some(&desc));
                    let dir = self
                        .store
                        .snapshot_dir(ns, &sn, &key)
                        .map_err(PullError::Store)?;
                    match self.apply_from_store(ns, &desc, dir, whiteouts).await {
                        Ok(a) => {
                            check_diff_id(&desc, &a.digest, &diff_id)?;
                            applied_ok = true;
                        }
                        Err(berth_image::ImageError::NeedsLowerLayers(_)) => {}
                        Err(e) => {
                            let _ = self.store.remove_snapshot(ns, &sn, &key);
                            return Err(PullError::Image(
                                format!("layer {}", desc.digest).to_string(),
                                e,
                            ));
                        }
                    }
                }
            }
            if !applied_ok {
                let _ = self.store.remove_snapshot(ns, &sn, &key);
            }
        } else if !has_content {
            let _permit = ctx.permits.acquire().await;
            self.download(ctx, &desc, None).await?;
        }

        // Chain it onto the layer below, once that one is committed.
        if let Some(mut b) = below
            && b.wait_for(|d| *d).await.is_err()
        {
            if applied_ok {
                let _ = self.store.remove_snapshot(ns, &sn, &key);
            }
            return Err(PullError::Interrupted(format!(
                "layer {}: a lower layer failed",
                desc.digest
            )));
        }
        let parent = parent.map(|p| p.to_string());
        if applied_ok {
            let r = self.store.commit_snapshot_onto(
                ns,
                &sn,
                chain.as_str(),
                &key,
                parent.as_deref(),
                snap_labels,
                Some(&ctx.lease),
            );
            let _ = self.store.remove_snapshot(ns, &sn, &key);
            match r {
                Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(PullError::Store(e)),
            }
        } else {
            ctx.progress
                .send("unpacking", &name, 0, desc.size, Some(&desc));
            self.apply_serial(ctx, &sn, &desc, &diff_id, &chain, parent.as_deref(), &key)
                .await?;
        }
        self.hold(ctx, &format!("snapshots/{sn}"), chain.as_str())?;
        self.label(
            ns,
            &desc.digest,
            [(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())],
        )?;
        ctx.progress
            .send("complete", &name, desc.size, desc.size, Some(&desc));
        let _ = done.send(true);
        Ok(())
    }

    /// Prepares `key` over the committed parent, mounts it, applies the layer from the content
    /// store, checks the diff id and commits it as `chain`.
    #[allow(clippy::too_many_arguments)]
    async fn apply_serial(
        &self,
        ctx: &Ctx,
        sn: &str,
        desc: &ImgDesc,
        diff_id: &Digest,
        chain: &Digest,
        parent: Option<&str>,
        key: &str,
    ) -> Result<(), PullError> {
        let ns = &ctx.ns;
        let mounts = self
            .store
            .prepare_snapshot(
                ns,
                sn,
                NewSnapshot {
                    key,
                    parent: parent.unwrap_or(""),
                    kind: SnapshotKind::Active,
                    labels: HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain.to_string())]),
                    lease: Some(&ctx.lease),
                },
            )
            .map_err(PullError::Store)?;
        let mounts = crate::pb::mounts_pb(mounts);
        let reader = self
            .store
            .content_reader(ns, &desc.digest)
            .map_err(PullError::Store)?;
        let dir = self.mounts_dir.clone();
        let applied = blocking(move || {
            let m = Mounted::new(&dir, &mounts)
                .map_err(|e| PullError::Internal(format!("mounting the snapshot: {e}")))?;
            Ok(berth_image::apply_layer(reader, m.path()))
        })
        .await;
        let applied = match applied {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                return Err(PullError::Image(
                    format!("layer {}", desc.digest).to_string(),
                    e,
                ));
            }
            Err(e) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                return Err(e);
            }
        };
        if let Err(e) = check_diff_id(desc, &applied.digest, diff_id) {
            let _ = self.store.remove_snapshot(ns, sn, key);
            return Err(e);
        }
        let r = self.store.commit_snapshot(
            ns,
            sn,
            chain.as_str(),
            key,
            HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain.to_string())]),
            Some(&ctx.lease),
        );
        match r {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists(_)) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                Ok(())
            }
            Err(e) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                Err(PullError::Store(e))
            }
        }
    }

    async fn apply_from_store(
        &self,
        ns: &str,
        desc: &ImgDesc,
        dir: PathBuf,
        whiteouts: Whiteouts,
    ) -> Result<berth_image::Applied, berth_image::ImageError> {
        let reader = self
            .store
            .content_reader(ns, &desc.digest)
            .map_err(|e| berth_image::ImageError::NotFound(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            berth_image::apply_layer_with(
                std::io::BufReader::with_capacity(1 << 20, reader),
                &dir,
                whiteouts,
            )
        })
        .await
        .map_err(|e| berth_image::ImageError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Downloads a layer into the content store (resuming a partial ingest), and when `apply`
    /// is given and the download starts at byte 0, applies it into that directory as it
    /// streams. Returns the apply's result, or `None` if nothing was applied.
    ///
    /// A partial download that cannot be resumed is discarded and the layer downloaded again
    /// from its first byte, once: one that is complete but does not verify, one the registry
    /// refuses to resume (416 Range Not Satisfiable, or any other HTTP error for the Range
    /// request), one whose resumed bytes end in a digest mismatch.
    async fn download(
        &self,
        ctx: &Ctx,
        desc: &ImgDesc,
        apply: Option<(PathBuf, Whiteouts)>,
    ) -> Result<Option<Result<berth_image::Applied, berth_image::ImageError>>, PullError> {
        match self.download_once(ctx, desc, apply.clone()).await {
            Err(Attempt::StartOver(why)) => {
                tracing::warn!(layer = %desc.digest, reason = %why,
                    "the partial download cannot be resumed: downloading the layer again");
                let (store, ns, r) = (
                    self.store.clone(),
                    ctx.ns.clone(),
                    format!("layer-{}", desc.digest),
                );
                blocking(move || match store.content_abort(&ns, &r) {
                    Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
                    Err(e) => Err(PullError::Store(e)),
                })
                .await?;
                self.download_once(ctx, desc, apply)
                    .await
                    .map_err(Attempt::into_error)
            }
            other => other.map_err(Attempt::into_error),
        }
    }

    /// One attempt of [`Puller::download`]; a resumed one that cannot go on asks to start over.
    async fn download_once(
        &self,
        ctx: &Ctx,
        desc: &ImgDesc,
        apply: Option<(PathBuf, Whiteouts)>,
    ) -> Result<Option<Result<berth_image::Applied, berth_image::ImageError>>, Attempt> {
        let name = desc.digest.to_string();
        let store = self.store.clone();
        let (ns, lease) = (ctx.ns.clone(), ctx.lease.clone());
        let (r, total, d) = (
            format!("layer-{}", desc.digest),
            desc.size,
            desc.digest.clone(),
        );
        let writer = blocking(move || {
            match store.content_writer(&ns, &r, Some(total), Some(d), Some(&lease), Sharing::Adopt)
            {
                Ok(w) => Ok(Some(w)),
                Err(StoreError::AlreadyExists(_)) => Ok(None),
                Err(e) => Err(PullError::Store(e)),
            }
        })
        .await?;
        let Some(mut writer) = writer else {
            ctx.progress
                .send("exists", &name, desc.size, desc.size, Some(desc));
            return Ok(match apply {
                Some((dir, w)) => Some(self.apply_from_store(&ctx.ns, desc, dir, w).await),
                None => None,
            });
        };
        let offset = writer.inner().offset();
        if offset > 0 && offset >= desc.size as u64 {
            // Downloaded in full before an interruption, never committed: commit it (which
            // verifies size and digest) instead of asking the registry for nothing.
            tracing::info!(layer = %desc.digest, offset, "committing a complete partial download");
            let store = self.store.clone();
            let labels = HashMap::from([ctx.source_label.clone()]);
            let (size, digest) = (desc.size, desc.digest.clone());
            let committed =
                blocking(
                    move || match store.content_commit(writer, size, Some(digest), &labels) {
                        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                        Err(e) => Err(PullError::Store(e)),
                    },
                )
                .await;
            if let Err(e) = committed {
                return Err(Attempt::StartOver(format!(
                    "the complete partial download does not verify: {e}"
                )));
            }
            ctx.progress
                .send("downloaded", &name, desc.size, desc.size, Some(desc));
            return Ok(match apply {
                Some((dir, w)) => Some(self.apply_from_store(&ctx.ns, desc, dir, w).await),
                None => None,
            });
        }
        if offset > 0 {
            tracing::info!(layer = %desc.digest, offset, "resuming a partial download");
        }
        let mut stream = match ctx.repo.fetch_blob(desc, offset).await {
            Ok(s) => s,
            Err(e @ berth_image::registry::RegistryError::Status { .. }) if offset > 0 => {
                return Err(Attempt::StartOver(format!(
                    "resuming at byte {offset}: {e}"
                )));
            }
            Err(e) => return Err(PullError::Registry(e).into()),
        };
        ctx.progress
            .send("downloading", &name, offset as i64, desc.size, Some(desc));

        // The applier reads what the sink passes on; it may stop early (on error) without
        // stopping the download.
        let (apply_tx, apply_task) = match apply.filter(|_| offset == 0) {
            Some((dir, whiteouts)) => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(64);
                let task = tokio::task::spawn_blocking(move || {
                    let reader = ChannelReader {
                        rx,
                        cur: Bytes::new(),
                    };
                    berth_image::apply_layer_with(reader, &dir, whiteouts)
                });
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let (tx, mut rx) = mpsc::channel::<Chunk>(64);
        let store = self.store.clone();
        let labels = HashMap::from([ctx.source_label.clone()]);
        let (size, digest) = (desc.size, desc.digest.clone());
        let sink = tokio::task::spawn_blocking(move || -> Result<(), PullError> {
            let mut pos = offset;
            let mut apply_tx = apply_tx;
            while let Some(c) = rx.blocking_recv() {
                match c {
                    Chunk::Data(b) => {
                        writer
                            .inner()
                            .write_at(pos, &b)
                            .map_err(|e| PullError::Store(berth_store::content_error(e)))?;
                        pos += b.len() as u64;
                        if let Some(t) = &apply_tx
                            && t.send(b).is_err()
                        {
                            apply_tx = None;
                        }
                    }
                    Chunk::End => {
                        drop(apply_tx);
                        return match store.content_commit(writer, size, Some(digest), &labels) {
                            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                            Err(e) => Err(PullError::Store(e)),
                        };
                    }
                }
            }
            Err(PullError::Interrupted("download interrupted".into()))
        });
        let mut last = Instant::now();
        let streamed: Result<(), PullError> = async {
            while let Some(chunk) = stream.next().await.map_err(PullError::Registry)? {
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    break;
                }
                if last.elapsed() >= Duration::from_millis(100) {
                    last = Instant::now();
                    ctx.progress.send(
                        "downloading",
                        &name,
                        stream.position() as i64,
                        desc.size,
                        Some(desc),
                    );
                }
            }
            let _ = tx.send(Chunk::End).await;
            Ok(())
        }
        .await;
        drop(tx);
        let sunk = sink
            .await
            .map_err(|e| PullError::Internal(format!("content writer task: {e}")))?;
        let applied = match apply_task {
            Some(t) => Some(
                t.await
                    .map_err(|e| PullError::Internal(format!("apply task: {e}")))?,
            ),
            None => None,
        };
        streamed?;
        match sunk {
            // The bytes kept from before did not belong to this blob after all.
            Err(e @ PullError::Store(StoreError::FailedPrecondition(_))) if offset > 0 => {
                return Err(Attempt::StartOver(format!(
                    "the resumed download does not verify: {e}"
                )));
            }
            other => other?,
        }
        ctx.progress
            .send("downloaded", &name, desc.size, desc.size, Some(desc));
        Ok(applied)
    }
}

/// How one download attempt failed.
#[derive(Debug)]
enum Attempt {
    /// The partial download it resumed is no good: discard it and download from byte 0.
    StartOver(String),
    /// For good.
    Failed(PullError),
}

impl Attempt {
    fn into_error(self) -> PullError {
        match self {
            Attempt::StartOver(why) => PullError::BadContent(why),
            Attempt::Failed(e) => e,
        }
    }
}

impl From<PullError> for Attempt {
    fn from(e: PullError) -> Self {
        Attempt::Failed(e)
    }
}

fn check_diff_id(desc: &ImgDesc, got: &Digest, want: &Digest) -> Result<(), PullError> {
    if got != want {
        return Err(PullError::BadContent(format!(
            "layer {}: uncompressed digest {got} does not match the config's diff id {want}",
            desc.digest
        )));
    }
    Ok(())
}
