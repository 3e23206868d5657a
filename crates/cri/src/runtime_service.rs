//! `runtime.v1.RuntimeService` as a table: each RPC and the CRI core's verb that answers it
//! (sandboxes in `sandbox.rs`, containers in `container.rs`, exec and the streaming URLs in
//! `exec.rs`, stats in `stats.rs`, the runtime's own status in `status.rs`). Checkpoints answer
//! Unimplemented with the reason.

use std::sync::Arc;

use berth_api::runtime::v1 as cri;
use tonic::Status;

use crate::rpcs::once;
use crate::state::Inner;

/// The runtime service.
#[derive(Debug, Clone)]
pub struct RuntimeService {
    inner: Arc<Inner>,
}

impl RuntimeService {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        RuntimeService { inner }
    }
}

/// Checkpoints and restores: berth-runc has none.
fn no_checkpoints<T>(rpc: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{rpc}: berth-runc has no checkpoint/restore"
    )))
}

rpcs! {
    impl cri::runtime_service_server::RuntimeService, for RuntimeService;
    streams {
        StreamPodSandboxesStream = cri::StreamPodSandboxesResponse;
        StreamContainersStream = cri::StreamContainersResponse;
        StreamContainerStatsStream = cri::StreamContainerStatsResponse;
        StreamPodSandboxStatsStream = cri::StreamPodSandboxStatsResponse;
        GetContainerEventsStream = cri::ContainerEventResponse;
        StreamPodSandboxMetricsStream = cri::StreamPodSandboxMetricsResponse;
    }

    open version(VersionRequest) -> cri::VersionResponse = |_core, _r| {
        Ok(crate::status::version())
    }
    open status(StatusRequest) -> cri::StatusResponse = |core, r| {
        Ok(core.runtime_status(r.verbose))
    }
    open runtime_config(RuntimeConfigRequest) -> cri::RuntimeConfigResponse = |_core, _r| {
        let cgroup_driver = cri::CgroupDriver::Cgroupfs as i32;
        let linux = Some(cri::LinuxRuntimeConfiguration { cgroup_driver });
        Ok(cri::RuntimeConfigResponse { linux })
    }
    // The pod CIDR is for CNI configurations that template it; pods get loopback only.
    open update_runtime_config(UpdateRuntimeConfigRequest) -> cri::UpdateRuntimeConfigResponse
        = |_core, _r| { Ok(cri::UpdateRuntimeConfigResponse {}) }

    ready run_pod_sandbox(RunPodSandboxRequest) -> cri::RunPodSandboxResponse = |core, r| {
        let pod_sandbox_id = core.run_sandbox(r).await?;
        Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
    }
    ready stop_pod_sandbox(StopPodSandboxRequest) -> cri::StopPodSandboxResponse = |core, r| {
        core.stop_sandbox(&r.pod_sandbox_id).await?;
        Ok(cri::StopPodSandboxResponse {})
    }
    ready remove_pod_sandbox(RemovePodSandboxRequest) -> cri::RemovePodSandboxResponse
        = |core, r| {
        core.remove_sandbox(&r.pod_sandbox_id).await?;
        Ok(cri::RemovePodSandboxResponse {})
    }
    ready pod_sandbox_status(PodSandboxStatusRequest) -> cri::PodSandboxStatusResponse
        = |core, r| { core.pod_sandbox_status(r) }
    ready list_pod_sandbox(ListPodSandboxRequest) -> cri::ListPodSandboxResponse = |core, r| {
        let items = core.list_sandboxes(r.filter.as_ref());
        Ok(cri::ListPodSandboxResponse { items })
    }
    ready stream_pod_sandboxes(StreamPodSandboxesRequest) -> Self::StreamPodSandboxesStream
        = |core, r| {
        let pod_sandboxes = core.list_sandboxes(r.filter.as_ref());
        Ok(once(cri::StreamPodSandboxesResponse { pod_sandboxes }))
    }
    // The pod's limits are the kubelet's to write on its pod cgroup (cgroupfs driver); nothing
    // of the pause process changes.
    ready update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest)
        -> cri::UpdatePodSandboxResourcesResponse = |core, r| {
        core.ready_sandbox(&r.pod_sandbox_id)?;
        Ok(cri::UpdatePodSandboxResourcesResponse {})
    }

    ready create_container(CreateContainerRequest) -> cri::CreateContainerResponse = |core, r| {
        let container_id = core.create_container(r).await?;
        Ok(cri::CreateContainerResponse { container_id })
    }
    ready start_container(StartContainerRequest) -> cri::StartContainerResponse = |core, r| {
        core.start_container(&r.container_id).await?;
        Ok(cri::StartContainerResponse {})
    }
    ready stop_container(StopContainerRequest) -> cri::StopContainerResponse = |core, r| {
        core.stop_container(&r.container_id, r.timeout).await?;
        Ok(cri::StopContainerResponse {})
    }
    ready remove_container(RemoveContainerRequest) -> cri::RemoveContainerResponse = |core, r| {
        core.remove_container(&r.container_id).await?;
        Ok(cri::RemoveContainerResponse {})
    }
    ready list_containers(ListContainersRequest) -> cri::ListContainersResponse = |core, r| {
        let containers = core.list_containers(r.filter.as_ref());
        Ok(cri::ListContainersResponse { containers })
    }
    ready stream_containers(StreamContainersRequest) -> Self::StreamContainersStream
        = |core, r| {
        let containers = core.list_containers(r.filter.as_ref());
        Ok(once(cri::StreamContainersResponse { containers }))
    }
    ready container_status(ContainerStatusRequest) -> cri::ContainerStatusResponse
        = |core, r| { core.container_status(r) }
    ready update_container_resources(UpdateContainerResourcesRequest)
        -> cri::UpdateContainerResourcesResponse = |core, r| {
        core.update_container(r).await?;
        Ok(cri::UpdateContainerResourcesResponse {})
    }
    ready reopen_container_log(ReopenContainerLogRequest) -> cri::ReopenContainerLogResponse
        = |core, r| {
        core.reopen_log(&r.container_id).await?;
        Ok(cri::ReopenContainerLogResponse {})
    }

    ready exec_sync(ExecSyncRequest) -> cri::ExecSyncResponse = |core, r| {
        core.exec_sync(r).await
    }
    ready exec(ExecRequest) -> cri::ExecResponse = |core, r| { core.exec_url(r) }
    ready attach(AttachRequest) -> cri::AttachResponse = |core, r| { core.attach_url(r) }
    ready port_forward(PortForwardRequest) -> cri::PortForwardResponse = |core, r| {
        core.port_forward_url(r)
    }

    ready container_stats(ContainerStatsRequest) -> cri::ContainerStatsResponse = |core, r| {
        let c = core.meta.find_container(&r.container_id)?;
        let stats = Some(core.container_stats(&c).await?);
        Ok(cri::ContainerStatsResponse { stats })
    }
    ready list_container_stats(ListContainerStatsRequest) -> cri::ListContainerStatsResponse
        = |core, r| {
        let stats = core.list_container_stats(r.filter.as_ref()).await?;
        Ok(cri::ListContainerStatsResponse { stats })
    }
    ready stream_container_stats(StreamContainerStatsRequest)
        -> Self::StreamContainerStatsStream = |core, r| {
        let container_stats = core.list_container_stats(r.filter.as_ref()).await?;
        Ok(once(cri::StreamContainerStatsResponse { container_stats }))
    }
    ready pod_sandbox_stats(PodSandboxStatsRequest) -> cri::PodSandboxStatsResponse
        = |core, r| {
        let sb = core.meta.find_sandbox(&r.pod_sandbox_id)?;
        let stats = Some(core.sandbox_stats(&sb).await?);
        Ok(cri::PodSandboxStatsResponse { stats })
    }
    ready list_pod_sandbox_stats(ListPodSandboxStatsRequest)
        -> cri::ListPodSandboxStatsResponse = |core, r| {
        let stats = core.pod_stats(r.filter.as_ref()).await?;
        Ok(cri::ListPodSandboxStatsResponse { stats })
    }
    ready stream_pod_sandbox_stats(StreamPodSandboxStatsRequest)
        -> Self::StreamPodSandboxStatsStream = |core, r| {
        let pod_sandbox_stats = core.pod_stats(r.filter.as_ref()).await?;
        Ok(once(cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }))
    }
    open list_metric_descriptors(ListMetricDescriptorsRequest)
        -> cri::ListMetricDescriptorsResponse = |_core, _r| {
        let descriptors = crate::metrics::descriptors();
        Ok(cri::ListMetricDescriptorsResponse { descriptors })
    }
    ready list_pod_sandbox_metrics(ListPodSandboxMetricsRequest)
        -> cri::ListPodSandboxMetricsResponse = |core, _r| {
        let pod_metrics = core.pod_metrics().await?;
        Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
    }
    ready stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest)
        -> Self::StreamPodSandboxMetricsStream = |core, _r| {
        let pod_sandbox_metrics = core.pod_metrics().await?;
        Ok(once(cri::StreamPodSandboxMetricsResponse { pod_sandbox_metrics }))
    }

    open get_container_events(GetEventsRequest) -> Self::GetContainerEventsStream
        = |core, _r| { Ok(core.event_stream()) }

    open checkpoint_container(CheckpointContainerRequest) -> cri::CheckpointContainerResponse
        = |_core, _r| { no_checkpoints("CheckpointContainer") }
    open checkpoint_pod(CheckpointPodRequest) -> cri::CheckpointPodResponse
        = |_core, _r| { no_checkpoints("CheckpointPod") }
    open restore_pod(RestorePodRequest) -> cri::RestorePodResponse
        = |_core, _r| { no_checkpoints("RestorePod") }
}
