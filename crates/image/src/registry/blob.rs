//! A blob download as a stream of chunks that resumes with a Range request where a connection
//! broke, and checks size and digest at its end.

use super::*;

impl Repository {
    /// Opens a blob for streaming from byte `offset` (to resume a partial download).
    pub async fn fetch_blob(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        let mut s = BlobStream {
            repo: self.clone(),
            desc: desc.clone(),
            pos: offset,
            resp: None,
            pending: None,
            host: 0,
            retries: self.inner.opts.blob_retries,
            hasher: (offset == 0).then(sha2::Sha256::new),
        };
        s.open().await?;
        Ok(s)
    }
}

/// A blob download: chunks in order, resumed with a Range request when the connection breaks,
/// never more bytes than the descriptor's size, and (when read from the start) checked against
/// the digest at the end.
pub struct BlobStream {
    repo: Repository,
    desc: Descriptor,
    pos: u64,
    resp: Option<reqwest::Response>,
    pending: Option<Bytes>,
    host: usize,
    retries: u32,
    hasher: Option<sha2::Sha256>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("digest", &self.desc.digest)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    /// Bytes delivered so far, counting the starting offset.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next chunk, `None` at the end (after the size, and the digest if read from the start,
    /// have been checked).
    pub async fn next(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let size = self.desc.size as u64;
        loop {
            let chunk = if let Some(p) = self.pending.take() {
                Ok(Some(p))
            } else if let Some(r) = self.resp.as_mut() {
                r.chunk().await
            } else {
                return Ok(None);
            };
            match chunk {
                Ok(Some(c)) => {
                    if self.pos + c.len() as u64 > size {
                        self.resp = None;
                        return Err(RegistryError::SizeMismatch {
                            what: self.desc.digest.to_string(),
                            expected: size,
                            actual: self.pos + c.len() as u64,
                        });
                    }
                    self.pos += c.len() as u64;
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&c);
                    }
                    return Ok(Some(c));
                }
                Ok(None) if self.pos >= size => {
                    self.resp = None;
                    if let Some(h) = self.hasher.take() {
                        let actual = Digest::from_sha256_bytes(&h.finalize());
                        if actual != self.desc.digest {
                            return Err(RegistryError::DigestMismatch {
                                what: self.desc.digest.to_string(),
                                expected: self.desc.digest.clone(),
                                actual,
                            });
                        }
                    }
                    return Ok(None);
                }
                Ok(None) if self.retries == 0 => {
                    self.resp = None;
                    return Err(RegistryError::SizeMismatch {
                        what: self.desc.digest.to_string(),
                        expected: size,
                        actual: self.pos,
                    });
                }
                Err(e) if self.retries == 0 => {
                    self.resp = None;
                    return Err(transport(&format!("blob {}", self.desc.digest), &e));
                }
                other => {
                    // Cut short: ask again for the rest.
                    self.retries -= 1;
                    if let Err(e) = other {
                        tracing::info!(digest = %self.desc.digest, pos = self.pos, error = %e,
                            "blob download interrupted, resuming with a Range request");
                    }
                    self.resp = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.open().await?;
                }
            }
        }
    }

    async fn open(&mut self) -> Result<(), RegistryError> {
        let hosts = self.repo.hosts_with(|c| c.pull);
        let mut last = None;
        while self.host < hosts.len() {
            let h = hosts[self.host];
            let url = h.url(&format!(
                "/{}/blobs/{}",
                self.repo.reference.path, self.desc.digest
            ));
            let range;
            let headers: &[(&str, String)] = if self.pos > 0 {
                range = [("range", format!("bytes={}-", self.pos))];
                &range
            } else {
                &[]
            };
            let result = match self
                .repo
                .send(h, Method::GET, &url, headers, None, false)
                .await
            {
                Ok(resp) => check_status(resp, "GET", &url, self.desc.digest.as_str()).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(resp) => {
                    let mut resp = resp;
                    if self.pos > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                        // No Range support: skip what we already have.
                        let mut skip = self.pos;
                        while skip > 0 {
                            let Some(c) = resp.chunk().await.map_err(|e| transport(&url, &e))?
                            else {
                                return Err(RegistryError::SizeMismatch {
                                    what: self.desc.digest.to_string(),
                                    expected: self.desc.size as u64,
                                    actual: self.pos - skip,
                                });
                            };
                            if (c.len() as u64) > skip {
                                // Keep the tail: put it back by wrapping in a one-off chunk.
                                let tail = c.slice(skip as usize..);
                                self.resp = Some(resp);
                                self.pending = Some(tail);
                                return Ok(());
                            }
                            skip -= c.len() as u64;
                        }
                    }
                    self.resp = Some(resp);
                    return Ok(());
                }
                Err(e @ (RegistryError::Unauthorized(_) | RegistryError::Config(_))) => {
                    return Err(e);
                }
                Err(e) => {
                    last = Some(e);
                    self.host += 1;
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            RegistryError::Config(format!(
                "no endpoint of {} may be pulled from",
                self.repo.reference.domain
            ))
        }))
    }
}
