//! CRI client for `hack/bench/cri`: times what a kubelet does to start a pod (RunPodSandbox,
//! CreateContainer, StartContainer of a busybox container) against any CRI socket, and makes
//! or removes a batch of idle pods for the memory figures, or starts the pod the streaming
//! figures use.
//!
//! Usage: cri-bench once SOCK IMAGE         one pod start; prints milliseconds, then removes it
//!        cri-bench up SOCK IMAGE N         N idle one-container pods
//!        cri-bench server SOCK IMAGE PORT  a pod whose container serves 100 MB of zeros to each
//!                                          connection on PORT; prints "POD_ID CONTAINER_ID"
//!        cri-bench down SOCK               removes every pod

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_api::runtime::v1 as cri;
use cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

async fn connect(sock: &str) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    let path = sock.trim_start_matches("unix://").to_string();
    let ch = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .with_context(|| format!("connecting to {sock}"))?;
    Ok(RuntimeServiceClient::new(ch))
}

fn pod(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-uid"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        linux: Some(cri::LinuxPodSandboxConfig {
            // The host's network for both runtimes: pod networking is not part of this figure.
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn start_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    name: &str,
    image: &str,
) -> anyhow::Result<String> {
    let cmd = ["sleep", "100000"].map(String::from).to_vec();
    Ok(start_pod_with(rt, name, image, cmd).await?.0)
}

/// A pod with one container running `command`: (pod id, container id).
async fn start_pod_with(
    rt: &mut RuntimeServiceClient<Channel>,
    name: &str,
    image: &str,
    command: Vec<String>,
) -> anyhow::Result<(String, String)> {
    let pc = pod(name);
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pc.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let cc = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command,
        labels: HashMap::new(),
        ..Default::default()
    };
    let cid = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(cc),
            sandbox_config: Some(pc),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: cid.clone(),
    })
    .await?;
    Ok((id, cid))
}

async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> anyhow::Result<()> {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .context("usage: cri-bench once|up|server|down SOCK [IMAGE [N|PORT]]")
    };
    let mut rt = connect(&arg(1)?).await?;
    match arg(0)?.as_str() {
        "once" => {
            let name = format!("once-{}", std::process::id());
            let t = Instant::now();
            let id = start_pod(&mut rt, &name, &arg(2)?).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            remove_pod(&mut rt, &id).await?;
            println!("{ms:.2}");
        }
        "up" => {
            let n: usize = arg(3)?.parse()?;
            for i in 0..n {
                start_pod(&mut rt, &format!("idle-{i}"), &arg(2)?).await?;
            }
            // Let the shims and daemon settle before anyone measures them.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        "server" => {
            let port: u16 = arg(3)?.parse()?;
            let script =
                format!("while true; do head -c 100000000 /dev/zero | nc -l -p {port}; done");
            let cmd = vec!["sh".into(), "-c".into(), script];
            let (pod, cid) =
                start_pod_with(&mut rt, &format!("server-{port}"), &arg(2)?, cmd).await?;
            println!("{pod} {cid}");
        }
        "down" => {
            let pods = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
            for p in pods {
                remove_pod(&mut rt, &p.id).await?;
            }
        }
        other => anyhow::bail!("unknown mode {other:?}"),
    }
    Ok(())
}
