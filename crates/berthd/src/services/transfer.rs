//! `containerd.services.transfer.v1.Transfer`: server-side transfers. Supported: a registry
//! (`containerd.types.transfer.OCIRegistry`) to the image store
//! (`containerd.types.transfer.ImageStore`), i.e. a pull, with progress on a Streaming stream
//! and credentials asked over another, as containerd 2.x clients do it.

use std::collections::HashMap;
use std::sync::Arc;

use berth_api::containerd::services::transfer::v1::{TransferRequest, transfer_server};
use berth_api::containerd::types::Descriptor;
use berth_api::containerd::types::transfer::{
    AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, Progress,
};
use berth_image::ImageRef;
use berth_image::media::PlatformSpec;
use berth_image::registry::{CredentialCallback, Credentials, HostOptions, Session};
use prost::Name;
use tokio::sync::{Mutex, mpsc};
use tonic::{Request, Response, Status};

use super::namespace;
use super::streaming::{Streams, any, from_any};
use crate::errors::pull_status;
use crate::pull::{ProgressSink, PullSpec, Puller};

#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    puller: Puller,
    streams: Arc<Streams>,
    hosts: HostOptions,
}

impl Transfer {
    pub(crate) fn new(puller: Puller, streams: Arc<Streams>, hosts: HostOptions) -> Self {
        Transfer {
            puller,
            streams,
            hosts,
        }
    }
}

fn type_name(a: &Option<prost_types::Any>) -> &str {
    a.as_ref()
        .map(|a| a.type_url.rsplit('/').next().unwrap_or_default())
        .unwrap_or("nothing")
}

/// Asks the client for credentials over its auth stream: one AuthRequest, one AuthResponse.
fn credentials_over(
    ends: crate::services::streaming::StreamEnds,
    reference: String,
) -> CredentialCallback {
    let ends = Arc::new(Mutex::new(ends));
    Arc::new(move |host: String, www: Vec<String>| {
        let ends = ends.clone();
        let reference = reference.clone();
        Box::pin(async move {
            let mut e = ends.lock().await;
            let req = AuthRequest {
                host,
                reference,
                wwwauthenticate: www,
            };
            e.to_client.send(any(&req)).await.ok()?;
            let reply =
                tokio::time::timeout(std::time::Duration::from_secs(60), e.from_client.recv())
                    .await
                    .ok()??;
            let r: AuthResponse = from_any(&reply, "auth response").ok()?;
            match AuthType::try_from(r.auth_type).unwrap_or(AuthType::None) {
                AuthType::Credentials => Some(Credentials {
                    username: r.username,
                    secret: r.secret,
                }),
                AuthType::Refresh => Some(Credentials {
                    username: String::new(),
                    secret: r.secret,
                }),
                AuthType::None | AuthType::Header => None,
            }
        })
    })
}

fn to_desc(d: &berth_image::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

impl Transfer {
    /// Hosts, headers and credentials for a registry source or destination.
    fn session(&self, ns: &str, source: &OciRegistry, field: &str) -> Result<Session, Status> {
        let mut session = Session {
            hosts: self.hosts.clone(),
            credentials: None,
            headers: Vec::new(),
        };
        if let Some(res) = &source.resolver {
            if !res.host_dir.is_empty() {
                session.hosts.dir = Some(res.host_dir.clone().into());
            }
            match res.default_scheme.as_str() {
                "" => {}
                "http" | "https" => session.hosts.default_scheme = Some(res.default_scheme.clone()),
                other => {
                    return Err(Status::invalid_argument(format!(
                        "{field}.resolver.default_scheme: {other:?} is not http or https"
                    )));
                }
            }
            session.headers = res
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !res.auth_stream.is_empty() {
                let ends = self.streams.take(ns, &res.auth_stream).ok_or_else(|| {
                    Status::not_found(format!(
                        "{field}.resolver.auth_stream: no open stream {:?}",
                        res.auth_stream
                    ))
                })?;
                session.credentials = Some(credentials_over(ends, source.reference.clone()));
            }
        }
        Ok(session)
    }

    /// Progress: forwards reports to the client's stream (if it opened one) until the sender
    /// is dropped; returns the sink and the forwarding task to wait for.
    fn progress(
        &self,
        ns: &str,
        options: Option<&berth_api::containerd::services::transfer::v1::TransferOptions>,
    ) -> Result<(ProgressSink, Option<tokio::task::JoinHandle<()>>), Status> {
        // Progress: forward the pull's reports to the client's stream until the pull ends.
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let forward = match options.map(|o| o.progress_stream.as_str()) {
            Some(id) if !id.is_empty() => {
                let ends = self.streams.take(ns, id).ok_or_else(|| {
                    Status::not_found(format!("options.progress_stream: no open stream {id:?}"))
                })?;
                Some(tokio::spawn(async move {
                    while let Some(p) = prx.recv().await {
                        let p: crate::pull::Progress = p;
                        let msg = Progress {
                            event: p.event,
                            name: p.name,
                            parents: p.parents,
                            progress: p.progress,
                            total: p.total,
                            desc: p.desc.as_ref().map(to_desc),
                        };
                        if ends.to_client.send(any(&msg)).await.is_err() {
                            break;
                        }
                    }
                }))
            }
            _ => None,
        };
        let progress = if forward.is_some() {
            ProgressSink::new(ptx)
        } else {
            drop(ptx);
            ProgressSink::default()
        };
        Ok((progress, forward))
    }

    async fn push(&self, ns: String, r: TransferRequest) -> Result<Response<()>, Status> {
        let source: ImageStore = from_any(r.source.as_ref().expect("checked"), "source")?;
        let dest: OciRegistry = from_any(r.destination.as_ref().expect("checked"), "destination")?;
        if source.name.is_empty() {
            return Err(Status::invalid_argument("source.name: required"));
        }
        let reference = ImageRef::parse(&dest.reference)
            .map_err(|e| Status::invalid_argument(format!("destination.reference: {e}")))?;
        let session = self.session(&ns, &dest, "destination")?;
        let (progress, forward) = self.progress(&ns, r.options.as_ref())?;
        let result = self
            .puller
            .push(&ns, &source.name, &reference, &session, progress)
            .await;
        if let Some(f) = forward {
            let _ = f.await;
        }
        result.map(|_| Response::new(())).map_err(pull_status)
    }
}

#[tonic::async_trait]
impl transfer_server::Transfer for Transfer {
    async fn transfer(&self, req: Request<TransferRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (src, dst) = (type_name(&r.source), type_name(&r.destination));
        if src == ImageStore::full_name() && dst == OciRegistry::full_name() {
            return self.push(ns, r).await;
        }
        if src != OciRegistry::full_name() || dst != ImageStore::full_name() {
            return Err(Status::unimplemented(format!(
                "transfer from {src} to {dst} is not supported (supported: {reg} to {store} \
                 (pull), {store} to {reg} (push))",
                reg = OciRegistry::full_name(),
                store = ImageStore::full_name()
            )));
        }
        let source: OciRegistry = from_any(r.source.as_ref().expect("checked above"), "source")?;
        let dest: ImageStore = from_any(
            r.destination.as_ref().expect("checked above"),
            "destination",
        )?;
        let reference = ImageRef::parse(&source.reference)
            .map_err(|e| Status::invalid_argument(format!("source.reference: {e}")))?;
        let name = if dest.name.is_empty() {
            reference.to_string()
        } else {
            dest.name.clone()
        };
        let platform = match dest
            .platforms
            .first()
            .or_else(|| dest.unpacks.first().and_then(|u| u.platform.as_ref()))
        {
            Some(p) if !p.os.is_empty() || !p.architecture.is_empty() => PlatformSpec::parse(
                &[p.os.as_str(), p.architecture.as_str(), p.variant.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/"),
            )
            .map_err(|e| Status::invalid_argument(format!("destination.platforms: {e}")))?,
            _ => PlatformSpec::host(),
        };
        let snapshotter = dest.unpacks.first().map(|u| {
            if u.snapshotter.is_empty() {
                "overlayfs".to_string()
            } else {
                u.snapshotter.clone()
            }
        });
        if let Some(sn) = &snapshotter {
            self.puller
                .check_snapshotter(sn)
                .map_err(|e| Status::invalid_argument(format!("destination.unpacks: {e}")))?;
        }
        let session = self.session(&ns, &source, "source")?;
        let mut labels: HashMap<String, String> = dest.labels.clone().into_iter().collect();
        labels.retain(|k, _| !k.is_empty());

        let (progress, forward) = self.progress(&ns, r.options.as_ref())?;
        let spec = PullSpec {
            ns,
            reference,
            name,
            platform,
            snapshotter,
            session,
            labels,
        };
        let result = self.puller.pull(spec, progress).await;
        if let Some(f) = forward {
            let _ = f.await;
        }
        result.map(|_| Response::new(())).map_err(pull_status)
    }
}
