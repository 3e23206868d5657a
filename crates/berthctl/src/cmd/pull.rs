//! `berthctl pull`: a server-side pull through the Transfer service, with progress (and, with
//! `--user`, credentials) over Streaming streams, as containerd 2.x's `ctr pull` does it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_api::containerd::services::streaming::v1::StreamInit;
use berth_api::containerd::services::streaming::v1::streaming_client::StreamingClient;
use berth_api::containerd::services::transfer::v1::transfer_client::TransferClient;
use berth_api::containerd::services::transfer::v1::{TransferOptions, TransferRequest};
use berth_api::containerd::types::Platform;
use berth_api::containerd::types::transfer::{
    AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, Progress, RegistryResolver,
    UnpackConfiguration,
};
use berth_image::ImageRef;
use berth_image::media::PlatformSpec;
use prost::Name;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Conn;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Image reference (`busybox`, `registry.example:5000/app:v1`, `...@sha256:...`).
    reference: String,
    /// Talk plain http to registries that have no hosts.toml.
    #[arg(long)]
    plain_http: bool,
    /// Directory of per-registry hosts.toml files (default: the daemon's).
    #[arg(long)]
    hosts_dir: Option<String>,
    /// Platform to pull (`linux/amd64`, `linux/arm64/v8`); default: the daemon's host.
    #[arg(long)]
    platform: Option<String>,
    /// Snapshotter to unpack into.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    /// Only fetch; do not unpack.
    #[arg(long)]
    no_unpack: bool,
    /// Credentials, `user:password` (asked for by the daemon only if the registry wants them).
    #[arg(short, long)]
    user: Option<String>,
    /// Labels for the image record (`key=value`).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Progress as plain lines even on a terminal.
    #[arg(long)]
    plain: bool,
}

fn any<M: Name>(m: &M) -> Any {
    Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

/// Opens a Streaming stream named `id`; returns the sender for our messages and the server's
/// messages after its acknowledgement.
async fn open_stream(
    conn: &Conn,
    id: &str,
) -> anyhow::Result<(mpsc::Sender<Any>, tonic::Streaming<Any>)> {
    let (tx, rx) = mpsc::channel::<Any>(16);
    tx.send(any(&StreamInit { id: id.to_string() })).await?;
    let mut client = StreamingClient::new(conn.channel.clone());
    let mut resp = client
        .stream(conn.req(ReceiverStream::new(rx)))
        .await?
        .into_inner();
    resp.message()
        .await?
        .context("the daemon closed the stream before acknowledging it")?;
    Ok((tx, resp))
}

fn stream_id(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{kind}-{nanos}-{}", std::process::id())
}

pub(crate) async fn run(conn: &Conn, a: Args) -> anyhow::Result<()> {
    let reference = ImageRef::parse(&a.reference).map_err(|e| anyhow::anyhow!("reference: {e}"))?;
    let name = reference.to_string();
    let platform = match &a.platform {
        Some(p) => Some(PlatformSpec::parse(p).map_err(|e| anyhow::anyhow!("--platform: {e}"))?),
        None => None,
    };
    let labels = super::parse_labels(&a.labels)?;
    let started = Instant::now();
    let platform_pb = platform.as_ref().map(|p| Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
        ..Default::default()
    });
    let dest = ImageStore {
        name: name.clone(),
        labels: labels.into_iter().collect(),
        platforms: platform_pb.clone().into_iter().collect(),
        unpacks: if a.no_unpack {
            Vec::new()
        } else {
            vec![UnpackConfiguration {
                platform: platform_pb,
                snapshotter: a.snapshotter.clone(),
            }]
        },
        ..Default::default()
    };
    let registry = Registry {
        hosts_dir: a.hosts_dir.as_deref(),
        plain_http: a.plain_http,
        user: a.user.as_deref(),
    };
    transfer(conn, &registry, a.plain, |resolver| {
        let source = OciRegistry {
            reference: name.clone(),
            resolver: Some(resolver),
        };
        (any(&source), any(&dest))
    })
    .await?;
    println!(
        "{name}: {} in {:.1}s",
        if a.no_unpack {
            "fetched"
        } else {
            "pulled and unpacked"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Default, Clone)]
struct Row {
    event: String,
    progress: i64,
    total: i64,
}

fn short(name: &str) -> &str {
    name.strip_prefix("sha256:")
        .map(|h| &h[..h.len().min(12)])
        .unwrap_or(name)
}

fn bar(progress: i64, total: i64) -> String {
    const W: i64 = 30;
    if total <= 0 {
        return " ".repeat(W as usize + 2);
    }
    let filled = (progress.clamp(0, total) * W / total) as usize;
    format!(
        "[{}{}]",
        "=".repeat(filled),
        " ".repeat(W as usize - filled)
    )
}

async fn show_progress(mut rx: tonic::Streaming<Any>, tty: bool) {
    let mut rows: BTreeMap<usize, (String, Row)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut drawn = 0usize;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut err = std::io::stderr();
    loop {
        let msg = match rx.message().await {
            Ok(Some(m)) => m,
            _ => break,
        };
        let Ok(p) = <Progress as prost::Message>::decode(msg.value.as_slice()) else {
            continue;
        };
        if p.name.is_empty() {
            continue;
        }
        let idx = match order.iter().position(|n| *n == p.name) {
            Some(i) => i,
            None => {
                order.push(p.name.clone());
                order.len() - 1
            }
        };
        let prev_event = rows.get(&idx).map(|(_, r)| r.event.clone());
        rows.insert(
            idx,
            (
                p.name.clone(),
                Row {
                    event: p.event.clone(),
                    progress: p.progress,
                    total: p.total,
                },
            ),
        );
        if tty {
            if last_draw.elapsed() < Duration::from_millis(100) && p.event == "downloading" {
                continue;
            }
            last_draw = Instant::now();
            if drawn > 0 {
                let _ = write!(err, "\x1b[{drawn}A");
            }
            let (mut done, mut total) = (0i64, 0i64);
            for (name, r) in rows.values() {
                if name.starts_with("sha256:") {
                    done += r.progress.min(r.total).max(0);
                    total += r.total.max(0);
                }
                let _ = writeln!(
                    err,
                    "\x1b[2K{:<14} {:<12} {} {}/{}",
                    short(name),
                    r.event,
                    bar(r.progress, r.total),
                    super::human_size(r.progress),
                    super::human_size(r.total)
                );
            }
            let _ = writeln!(
                err,
                "\x1b[2K{:<14} {:<12} {} {}/{}",
                "total",
                "",
                bar(done, total),
                super::human_size(done),
                super::human_size(total)
            );
            drawn = rows.len() + 1;
        } else if prev_event.as_deref() != Some(p.event.as_str()) {
            let _ = writeln!(
                err,
                "{} {} {}/{}",
                short(&p.name),
                p.event,
                p.progress,
                p.total
            );
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The image to push, by its name in this namespace.
    image: String,
    /// Where to push it (default: the image's own name).
    remote: Option<String>,
    /// Talk plain http to registries that have no hosts.toml.
    #[arg(long)]
    plain_http: bool,
    /// Directory of per-registry hosts.toml files (default: the daemon's).
    #[arg(long)]
    hosts_dir: Option<String>,
    /// Credentials, `user:password`.
    #[arg(short, long)]
    user: Option<String>,
    /// Progress as plain lines even on a terminal.
    #[arg(long)]
    plain: bool,
}

/// Opens the auth stream answering the daemon's credential requests with `user:password`.
async fn auth_stream(
    conn: &Conn,
    user: &str,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let (user, pass) = user.split_once(':').context("--user: want user:password")?;
    let (user, pass) = (user.to_string(), pass.to_string());
    let id = stream_id("auth");
    let (tx, mut rx) = open_stream(conn, &id).await?;
    let task = tokio::spawn(async move {
        while let Ok(Some(m)) = rx.message().await {
            if !m.type_url.ends_with(AuthRequest::full_name().as_str()) {
                continue;
            }
            let reply = AuthResponse {
                auth_type: AuthType::Credentials as i32,
                username: user.clone(),
                secret: pass.clone(),
                expire_at: None,
            };
            if tx.send(any(&reply)).await.is_err() {
                break;
            }
        }
    });
    Ok((id, task))
}

/// How to reach the registry side of a transfer.
struct Registry<'a> {
    hosts_dir: Option<&'a str>,
    plain_http: bool,
    user: Option<&'a str>,
}

/// Runs one Transfer: opens the progress stream (printed as it comes) and, with credentials,
/// the auth stream; `ends` builds the source and destination around the registry resolver.
async fn transfer(
    conn: &Conn,
    registry: &Registry<'_>,
    plain: bool,
    ends: impl FnOnce(RegistryResolver) -> (Any, Any),
) -> anyhow::Result<()> {
    let progress_id = stream_id("progress");
    let (_progress_tx, progress_rx) = open_stream(conn, &progress_id).await?;
    let tty = std::io::stderr().is_terminal() && !plain;
    let printer = tokio::spawn(show_progress(progress_rx, tty));
    let mut resolver = RegistryResolver {
        host_dir: registry.hosts_dir.unwrap_or_default().to_string(),
        default_scheme: if registry.plain_http {
            "http".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let mut auth_task = None;
    if let Some(u) = registry.user {
        let (id, task) = auth_stream(conn, u).await?;
        resolver.auth_stream = id;
        auth_task = Some(task);
    }
    let (source, destination) = ends(resolver);
    let req = TransferRequest {
        source: Some(source),
        destination: Some(destination),
        options: Some(TransferOptions {
            progress_stream: progress_id,
        }),
    };
    let result = TransferClient::new(conn.channel.clone())
        .transfer(conn.req(req))
        .await;
    // The daemon closes the progress stream when the transfer ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;
    if let Some(t) = auth_task {
        t.abort();
    }
    result?;
    Ok(())
}

pub(crate) async fn push(conn: &Conn, a: PushArgs) -> anyhow::Result<()> {
    let remote = a.remote.clone().unwrap_or_else(|| a.image.clone());
    let reference = ImageRef::parse(&remote).map_err(|e| anyhow::anyhow!("remote: {e}"))?;
    let started = Instant::now();
    let registry = Registry {
        hosts_dir: a.hosts_dir.as_deref(),
        plain_http: a.plain_http,
        user: a.user.as_deref(),
    };
    transfer(conn, &registry, a.plain, |resolver| {
        let source = ImageStore {
            name: a.image.clone(),
            ..Default::default()
        };
        let dest = OciRegistry {
            reference: reference.to_string(),
            resolver: Some(resolver),
        };
        (any(&source), any(&dest))
    })
    .await?;
    println!(
        "{}: pushed to {reference} in {:.1}s",
        a.image,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
