//! `runtime.v1.RuntimeService`: a thin adapter over the CRI core (validation, the RPC's
//! shape); Exec, Attach and PortForward hand out streaming URLs (`streaming.rs` serves them);
//! checkpoints answer Unimplemented with the reason.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::runtime::v1 as cri;
use cri::runtime_service_server::RuntimeService as Svc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::state::Inner;

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The runtime service.
#[derive(Debug, Clone)]
pub struct RuntimeService {
    inner: Arc<Inner>,
}

/// A streaming request's refusal as the kubelet's streaming server codes it.
fn stream_status(e: berth_stream::StreamError) -> Status {
    match e {
        berth_stream::StreamError::TooManyRequests => Status::resource_exhausted(e.to_string()),
        berth_stream::StreamError::Bind { .. } => Status::internal(e.to_string()),
        e => Status::invalid_argument(e.to_string()),
    }
}

impl RuntimeService {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        RuntimeService { inner }
    }
}

fn once<T: Send + 'static>(v: T) -> Stream2<T> {
    Box::pin(tokio_stream::iter(vec![Ok(v)]))
}

macro_rules! ready {
    ($s:expr) => {
        $s.inner.ready().await?
    };
}

/// CRI API version this runtime speaks.
const RUNTIME_API_VERSION: &str = "v1";

#[tonic::async_trait]
impl Svc for RuntimeService {
    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "berth".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        ready!(self);
        let id = self.inner.run_sandbox(req.into_inner()).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        ready!(self);
        self.inner
            .stop_sandbox(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        ready!(self);
        self.inner
            .remove_sandbox(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        ready!(self);
        let r = req.into_inner();
        let sb = self.inner.meta.find_sandbox(&r.pod_sandbox_id)?;
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "pid": sb.st.pid,
                    "netNamespacePath": sb.st.netns,
                    "runtimeHandler": sb.st.runtime_handler,
                    "runtimeType": sb.st.runtime_type,
                    "image": sb.st.image,
                })
                .to_string(),
            );
        }
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(crate::sandbox::status(&sb)),
            info,
            containers_statuses: vec![],
            timestamp: crate::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        ready!(self);
        let items = self.inner.list_sandboxes(req.into_inner().filter.as_ref());
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = Stream2<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        ready!(self);
        let pod_sandboxes = self.inner.list_sandboxes(req.into_inner().filter.as_ref());
        Ok(Response::new(once(cri::StreamPodSandboxesResponse {
            pod_sandboxes,
        })))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        ready!(self);
        let container_id = self.inner.create_container(req.into_inner()).await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        ready!(self);
        self.inner
            .start_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        ready!(self);
        let r = req.into_inner();
        self.inner
            .stop_container(&r.container_id, r.timeout)
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        ready!(self);
        self.inner
            .remove_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        ready!(self);
        let containers = self.inner.list_containers(req.into_inner().filter.as_ref());
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    type StreamContainersStream = Stream2<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        ready!(self);
        let containers = self.inner.list_containers(req.into_inner().filter.as_ref());
        Ok(Response::new(once(cri::StreamContainersResponse {
            containers,
        })))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        ready!(self);
        let r = req.into_inner();
        let c = self.inner.meta.find_container(&r.container_id)?;
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "sandboxID": c.st.sandbox_id,
                    "pid": c.st.pid,
                    "runtimeType": c.st.runtime_type,
                })
                .to_string(),
            );
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(crate::container::status(&c)),
            info,
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        ready!(self);
        self.inner.update_container(req.into_inner()).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        ready!(self);
        self.inner
            .reopen_log(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        ready!(self);
        Ok(Response::new(self.inner.exec_sync(req.into_inner()).await?))
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        ready!(self);
        let r = req.into_inner();
        let c = self.inner.running_container(&r.container_id)?;
        let url = self
            .inner
            .stream_server()?
            .get_exec(berth_stream::ExecRequest {
                container_id: c.id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(stream_status)?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        ready!(self);
        let r = req.into_inner();
        let c = self.inner.running_container(&r.container_id)?;
        let url = self
            .inner
            .stream_server()?
            .get_attach(berth_stream::AttachRequest {
                container_id: c.id,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(stream_status)?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        ready!(self);
        let r = req.into_inner();
        let sb = self.inner.meta.find_sandbox(&r.pod_sandbox_id)?;
        if !sb.st.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {}: is not ready",
                sb.id
            )));
        }
        let url = self
            .inner
            .stream_server()?
            .get_port_forward(berth_stream::PortForwardRequest {
                pod_sandbox_id: sb.id,
                ports: r.port,
            })
            .map_err(stream_status)?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        ready!(self);
        let c = self
            .inner
            .meta
            .find_container(&req.into_inner().container_id)?;
        let stats = self.inner.container_stats(&c).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        ready!(self);
        let stats = self
            .inner
            .list_container_stats(req.into_inner().filter.as_ref())
            .await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = Stream2<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        ready!(self);
        let container_stats = self
            .inner
            .list_container_stats(req.into_inner().filter.as_ref())
            .await?;
        Ok(Response::new(once(cri::StreamContainerStatsResponse {
            container_stats,
        })))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        ready!(self);
        let sb = self
            .inner
            .meta
            .find_sandbox(&req.into_inner().pod_sandbox_id)?;
        let stats = self.inner.sandbox_stats(&sb).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        ready!(self);
        let stats = self.pod_stats(req.into_inner().filter.as_ref()).await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = Stream2<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        ready!(self);
        let pod_sandbox_stats = self.pod_stats(req.into_inner().filter.as_ref()).await?;
        Ok(Response::new(once(cri::StreamPodSandboxStatsResponse {
            pod_sandbox_stats,
        })))
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The pod CIDR is for CNI configurations that template it; pods get loopback only.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        req: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = req.into_inner().verbose;
        let network = self.inner.cni.load();
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: network.is_ok(),
                reason: if network.is_ok() {
                    String::new()
                } else {
                    "NetworkPluginNotReady".into()
                },
                message: match &network {
                    Ok(_) => String::new(),
                    Err(e) => format!("Network plugin returns error: cni config load failed: {e}"),
                },
            },
        ];
        let runtime_handlers = self
            .inner
            .cfg
            .runtimes
            .keys()
            .map(|name| cri::RuntimeHandler {
                name: name.clone(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect();
        let mut info = std::collections::HashMap::new();
        if verbose {
            let c = &self.inner.cfg;
            info.insert(
                "config".to_string(),
                serde_json::json!({
                    "sandboxImage": c.sandbox_image,
                    "snapshotter": c.snapshotter,
                    "defaultRuntimeName": c.default_runtime_name,
                    "runtimes": c.runtimes.iter().map(|(k, v)| (k.clone(), v.runtime_type.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                    "restrictOOMScoreAdj": c.restrict_oom_score_adj,
                    "maxContainerLogLineSize": c.max_container_log_line_size,
                    "cgroupParent": c.cgroup_parent,
                })
                .to_string(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
                user_namespaces_host_network: false,
                mount_options: false,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointContainer: berth-runc has no checkpoint/restore",
        ))
    }

    async fn checkpoint_pod(
        &self,
        _: Request<cri::CheckpointPodRequest>,
    ) -> Result<Response<cri::CheckpointPodResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointPod: berth-runc has no checkpoint/restore",
        ))
    }

    async fn restore_pod(
        &self,
        _: Request<cri::RestorePodRequest>,
    ) -> Result<Response<cri::RestorePodResponse>, Status> {
        Err(Status::unimplemented(
            "RestorePod: berth-runc has no checkpoint/restore",
        ))
    }

    type GetContainerEventsStream = Stream2<cri::ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let rx = self.inner.events.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| match r {
            Ok(ev) => Some(Ok(ev)),
            // A subscriber that falls behind loses events, as with containerd; it is told.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => Some(Err(
                Status::resource_exhausted(format!("{n} events were dropped")),
            )),
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        ready!(self);
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: self.pod_metrics().await?,
        }))
    }

    type StreamPodSandboxMetricsStream = Stream2<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        ready!(self);
        let pod_sandbox_metrics = self.pod_metrics().await?;
        Ok(Response::new(once(cri::StreamPodSandboxMetricsResponse {
            pod_sandbox_metrics,
        })))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        ready!(self);
        let r = req.into_inner();
        let sb = self.inner.meta.find_sandbox(&r.pod_sandbox_id)?;
        if !sb.st.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {}: is not ready",
                sb.id
            )));
        }
        // The pod's limits are the kubelet's to write on its pod cgroup (cgroupfs driver);
        // nothing of the pause process changes.
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }
}

impl RuntimeService {
    async fn pod_stats(
        &self,
        f: Option<&cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, Status> {
        let all: Vec<crate::meta::Sandbox> = self
            .inner
            .meta
            .with(|ix| ix.sandboxes.values().cloned().collect());
        let mut out = Vec::new();
        for sb in all {
            if let Some(f) = f {
                if !f.id.is_empty() && !sb.id.starts_with(&f.id) {
                    continue;
                }
                if !f
                    .label_selector
                    .iter()
                    .all(|(k, v)| sb.config.labels.get(k) == Some(v))
                {
                    continue;
                }
            }
            out.push(self.inner.sandbox_stats(&sb).await?);
        }
        Ok(out)
    }

    async fn pod_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>, Status> {
        let stats = self.pod_stats(None).await?;
        Ok(stats.iter().map(crate::metrics::pod_metrics).collect())
    }
}

use tokio_stream::StreamExt as _;
