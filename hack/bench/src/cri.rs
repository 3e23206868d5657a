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
//!        cri-bench exec RUNS SOCK_A CID_A SOCK_B CID_B
//!            exec latency of `true` as the kubelet sees it (one gRPC connection per runtime held
//!            open, as the kubelet holds it): ExecSync (exec probes), and Exec followed by the
//!            SPDY/3.1 session on the returned URL until the exit status arrives (kubectl exec
//!            through the kubelet's streaming proxy); RUNS interleaved runs, prints
//!            "exec-sync MEDIAN_A MEDIAN_B" and "exec MEDIAN_A MEDIAN_B" in milliseconds

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_api::runtime::v1 as cri;
use berth_stream::spdy::{Frame, FrameDecoder, FrameEncoder, Headers};
use cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

async fn exec_sync(rt: &mut RuntimeServiceClient<Channel>, cid: &str) -> anyhow::Result<()> {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: cid.into(),
            cmd: vec!["true".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    anyhow::ensure!(r.exit_code == 0, "ExecSync of true exited {}", r.exit_code);
    Ok(())
}

/// Exec of `true` with stdout and stderr, then the SPDY/3.1 session on the URL as client-go's
/// remotecommand (v4.channel.k8s.io) runs it: an error, a stdout and a stderr stream, until the
/// error stream ends with the exit status.
async fn exec_streaming(rt: &mut RuntimeServiceClient<Channel>, cid: &str) -> anyhow::Result<()> {
    let url = rt
        .exec(cri::ExecRequest {
            container_id: cid.into(),
            cmd: vec!["true".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .url;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("exec URL {url:?} is not http://"))?;
    let (host, path) = rest.split_at(rest.find('/').context("exec URL has no path")?);
    let mut io = tokio::net::TcpStream::connect(host).await?;
    io.set_nodelay(true)?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    io.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "stream server closed before answering the upgrade");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    let mut dec = FrameDecoder::new();
    dec.extend(&buf[head_end..]);
    let mut enc = FrameEncoder::new();
    let mut out = Vec::new();
    for (i, kind) in ["error", "stdout", "stderr"].iter().enumerate() {
        let headers = Headers::new().with("streamtype", kind);
        let syn = Frame::SynStream {
            stream_id: 2 * i as u32 + 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers,
        };
        enc.encode(&syn, &mut out)?;
    }
    io.write_all(&out).await?;
    // The status arrives on the error stream, which then ends: FIN, a reset, the session's
    // GOAWAY or the connection's close, depending on the server.
    let mut status = Vec::new();
    'session: loop {
        while let Some(frame) = dec.next_frame()? {
            match frame {
                Frame::Data {
                    stream_id: 1,
                    fin,
                    data,
                } => {
                    status.extend_from_slice(&data);
                    if fin {
                        break 'session;
                    }
                }
                Frame::RstStream { stream_id: 1, .. } | Frame::GoAway { .. } => break 'session,
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        dec.extend(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&status);
    anyhow::ensure!(
        text.contains("Success"),
        "exec of true: no success status ({text:?})"
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .context("usage: cri-bench once|up|server|down SOCK [IMAGE [N|PORT]]")
    };
    if arg(0)? == "exec" {
        let runs: usize = arg(1)?.parse()?;
        let mut a = connect(&arg(2)?).await?;
        let mut b = connect(&arg(4)?).await?;
        let (ca, cb) = (arg(3)?, arg(5)?);
        // One of each first: connections and caches warm, as on a running node.
        for (rt, cid, sock) in [(&mut a, &ca, arg(2)?), (&mut b, &cb, arg(4)?)] {
            exec_sync(rt, cid)
                .await
                .with_context(|| format!("ExecSync on {sock}"))?;
            exec_streaming(rt, cid)
                .await
                .with_context(|| format!("Exec on {sock}"))?;
        }
        let mut t = [(); 4].map(|_| Vec::with_capacity(runs));
        for _ in 0..runs {
            let s = Instant::now();
            exec_sync(&mut a, &ca).await?;
            t[0].push(s.elapsed().as_secs_f64() * 1000.0);
            let s = Instant::now();
            exec_sync(&mut b, &cb).await?;
            t[1].push(s.elapsed().as_secs_f64() * 1000.0);
            let s = Instant::now();
            exec_streaming(&mut a, &ca).await?;
            t[2].push(s.elapsed().as_secs_f64() * 1000.0);
            let s = Instant::now();
            exec_streaming(&mut b, &cb).await?;
            t[3].push(s.elapsed().as_secs_f64() * 1000.0);
        }
        let [sa, sb, ea, eb] = t.map(median);
        println!("exec-sync {sa:.2} {sb:.2}");
        println!("exec {ea:.2} {eb:.2}");
        return Ok(());
    }
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
