//! `containerd.services.content.v1.Content`: blobs per namespace, streamed reads and the
//! bidirectional Write protocol (STAT / WRITE / COMMIT) containerd's clients speak.

use berth_store::Sharing;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_api::containerd::events::ContentDelete;
use berth_api::containerd::services::content::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest,
    ReadContentResponse, StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction,
    WriteContentRequest, WriteContentResponse, content_server,
};
use berth_store::filters::label_field;
use berth_store::{ContentInfo, Digest, IngestStatus, NsWriter, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{
    batches, blocking, digest, lease, mask, namespace, parse_filters, parts, required, saved,
    select, sys_ts, ts,
};
use crate::errors::to_status;
use crate::events::Exchange;
use crate::gc::Collector;

/// Largest chunk of a Read response.
const READ_CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Content {
    store: Store,
    events: Arc<Exchange>,
    gc: Collector,
}

impl Content {
    pub(crate) fn new(store: Store, events: Arc<Exchange>, gc: Collector) -> Self {
        Content { store, events, gc }
    }
}

fn info_to_pb(i: ContentInfo) -> Info {
    Info {
        digest: i.digest.to_string(),
        size: i.size,
        created_at: ts(i.created_at),
        updated_at: ts(i.updated_at),
        labels: i.labels,
    }
}

fn status_to_pb(s: IngestStatus) -> berth_api::containerd::services::content::v1::Status {
    berth_api::containerd::services::content::v1::Status {
        started_at: sys_ts(s.started_at),
        updated_at: sys_ts(s.updated_at),
        r#ref: s.r#ref,
        offset: s.offset as i64,
        total: s.total,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

fn info_field(i: &ContentInfo, p: &[String]) -> Option<String> {
    match p.first().map(String::as_str)? {
        "digest" => Some(i.digest.to_string()),
        "size" => Some(i.size.to_string()),
        "labels" => label_field(&i.labels, p),
        _ => None,
    }
}

fn status_field(s: &IngestStatus, p: &[String]) -> Option<String> {
    match p.first().map(String::as_str)? {
        "ref" => Some(s.r#ref.clone()),
        "expected" => s.expected.as_ref().map(|d| d.to_string()),
        _ => None,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl content_server::Content for Content {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let (ns, r) = parts(req)?;
        let d = digest("digest", &r.digest)?;
        let info = self.store.content_info(&ns, &d).map_err(to_status)?;
        let info = Some(info_to_pb(info));
        Ok(Response::new(InfoResponse { info }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let (ns, r) = parts(req)?;
        let (info, paths) = (required("info", r.info)?, mask(r.update_mask));
        let d = digest("info.digest", &info.digest)?;
        let updated = self.store.content_update(&ns, &d, &info.labels, &paths);
        let updated = saved(&self.store, updated).await?;
        self.gc.schedule();
        let info = Some(info_to_pb(updated));
        Ok(Response::new(UpdateResponse { info }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        req: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&req)?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let store = self.store.clone();
        let infos = blocking(move || store.content_list(&ns).map_err(to_status)).await?;
        let matching = select(infos, &filter, info_field, info_to_pb);
        let batches = batches(matching, |info| ListContentResponse { info });
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, req: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = parts(req)?;
        let d = digest("digest", &r.digest)?;
        saved(&self.store, self.store.content_delete(&ns, &d)).await?;
        let digest = d.to_string();
        self.events
            .publish(&ns, "/content/delete", &ContentDelete { digest });
        self.gc.schedule();
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        req: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let d = digest("digest", &req.digest)?;
        if req.offset < 0 {
            return Err(Status::invalid_argument("offset: must not be negative"));
        }
        if req.size < 0 {
            return Err(Status::invalid_argument("size: must not be negative"));
        }
        let reader = self.store.content_reader(&ns, &d).map_err(to_status)?;
        let total = reader.size();
        let offset = req.offset as u64;
        if offset > total {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the end of {d} ({total} bytes)"
            )));
        }
        let end = if req.size == 0 {
            total
        } else {
            total.min(offset.saturating_add(req.size as u64))
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let mut pos = offset;
            while pos < end {
                let n = ((end - pos) as usize).min(READ_CHUNK);
                let mut buf = vec![0u8; n];
                let got = match reader.read_at(pos, &mut buf) {
                    Ok(0) => {
                        let _ = tx.blocking_send(Err(Status::data_loss(format!(
                            "{d}: blob shorter than its size"
                        ))));
                        return;
                    }
                    Ok(got) => got,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                };
                buf.truncate(got);
                let msg = ReadContentResponse {
                    offset: pos as i64,
                    data: buf,
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return;
                }
                pos += got as u64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let (ns, r) = parts(req)?;
        let st = self
            .store
            .content_status(&ns, &r.r#ref)
            .map_err(to_status)?;
        let status = Some(status_to_pb(st));
        Ok(Response::new(StatusResponse { status }))
    }

    async fn list_statuses(
        &self,
        req: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let (ns, r) = parts(req)?;
        let filter = parse_filters(&r.filters)?;
        let all = self.store.content_statuses(&ns).map_err(to_status)?;
        let statuses = select(all, &filter, status_field, status_to_pb);
        Ok(Response::new(ListStatusesResponse { statuses }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            let result = write_session(&store, &ns, lease.as_deref(), &mut input, &tx).await;
            if let Err(st) = result {
                let _ = tx.send(Err(st)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let (store, r) = (self.store.clone(), req.into_inner().r#ref);
        // May wait a moment for a closing writer of the ref.
        blocking(move || store.content_abort(&ns, &r).map_err(to_status)).await?;
        Ok(Response::new(()))
    }
}

/// One Write stream: opens the ingest on the first message, then applies each message in order.
async fn write_session(
    store: &Store,
    ns: &str,
    lease: Option<&str>,
    input: &mut Streaming<WriteContentRequest>,
    tx: &mpsc::Sender<Result<WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = input.next().await.transpose()? else {
        return Ok(());
    };
    if first.r#ref.is_empty() {
        return Err(Status::invalid_argument(
            "first message must have a reference",
        ));
    }
    let mut expected: Option<Digest> = match first.expected.as_str() {
        "" => None,
        s => Some(digest("expected", s)?),
    };
    let mut total = first.total;
    let writer = {
        let (store, ns, r, lease, exp) = (
            store.clone(),
            ns.to_string(),
            first.r#ref.clone(),
            lease.map(str::to_string),
            expected.clone(),
        );
        blocking(move || {
            store
                .content_writer(
                    &ns,
                    &r,
                    (total > 0).then_some(total),
                    exp,
                    lease.as_deref(),
                    Sharing::OnCommit,
                )
                .map_err(to_status)
        })
        .await?
    };
    let mut writer = Some(writer);
    let mut msg = Some(first);
    loop {
        let Some(req) = msg.take() else {
            match input.next().await.transpose()? {
                Some(m) => {
                    msg = Some(m);
                    continue;
                }
                // The client went away without committing: the ingest stays for a resume.
                None => return Ok(()),
            }
        };
        if req.total > 0 {
            total = req.total;
        }
        if !req.expected.is_empty() {
            expected = Some(digest("expected", &req.expected)?);
        }
        let action = WriteAction::try_from(req.action).map_err(|_| {
            Status::invalid_argument(format!("action: unknown write action {}", req.action))
        })?;
        let mut w = writer
            .take()
            .ok_or_else(|| Status::failed_precondition("write after commit"))?;
        // What this message declares (the first one's was given at the open).
        if req.total > 0 {
            w.set_total(req.total);
        }
        if !req.expected.is_empty()
            && let Some(d) = &expected
        {
            w.set_expected(d.clone());
        }
        match action {
            WriteAction::Stat => {
                tx.send(Ok(response(action, &w)))
                    .await
                    .map_err(|_| Status::cancelled("client went away"))?;
                writer = Some(w);
            }
            WriteAction::Write | WriteAction::Commit => {
                let (w, done) = apply(store, w, req, action, total, expected.clone()).await?;
                let resp = match &w {
                    Some(w) => response(action, w),
                    None => WriteContentResponse {
                        action: action as i32,
                        offset: done.as_ref().map(|(_, size)| *size as i64).unwrap_or(0),
                        total,
                        digest: done
                            .as_ref()
                            .map(|(d, _)| d.to_string())
                            .unwrap_or_default(),
                        ..Default::default()
                    },
                };
                tx.send(Ok(resp))
                    .await
                    .map_err(|_| Status::cancelled("client went away"))?;
                if action == WriteAction::Commit {
                    return Ok(());
                }
                writer = w;
            }
        }
    }
}

fn response(action: WriteAction, w: &NsWriter) -> WriteContentResponse {
    let st = w.status();
    WriteContentResponse {
        action: action as i32,
        started_at: sys_ts(st.started_at),
        updated_at: sys_ts(st.updated_at),
        offset: st.offset as i64,
        total: st.total,
        digest: w.digest().to_string(),
    }
}

/// Applies a WRITE or COMMIT on the blocking pool. Returns the writer (after a write) or the
/// committed digest and size (after a commit).
async fn apply(
    store: &Store,
    mut w: NsWriter,
    req: WriteContentRequest,
    action: WriteAction,
    total: i64,
    expected: Option<Digest>,
) -> Result<(Option<NsWriter>, Option<(Digest, u64)>), Status> {
    let store = store.clone();
    blocking(move || {
        let current = w.offset();
        if req.offset < 0 {
            return Err(Status::invalid_argument("offset: must not be negative"));
        }
        let offset = req.offset as u64;
        if offset > 0 && offset != current {
            return Err(Status::out_of_range(format!(
                "write @{offset} must occur at current offset {current}"
            )));
        }
        if !req.data.is_empty() || (offset == 0 && current > 0) {
            w.write_at(offset, &req.data).map_err(to_status)?;
        }
        if action != WriteAction::Commit {
            return Ok((Some(w), None));
        }
        let labels: HashMap<String, String> = req.labels;
        let size = w.offset();
        let d = store
            .content_commit(w, total, expected, &labels)
            .map_err(to_status)?;
        store.flush_blocking().map_err(to_status)?;
        Ok((None, Some((d, size))))
    })
    .await
}
