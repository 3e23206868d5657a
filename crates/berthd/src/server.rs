//! Daemon start-up and shutdown: directories, store, socket, gRPC server, signals.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::codegen::http;

use anyhow::{Context, bail};
use berth_api::containerd::services::{
    containers::v1::containers_server::ContainersServer,
    content::v1::content_server::ContentServer, diff::v1::diff_server::DiffServer,
    events::v1::events_server::EventsServer, images::v1::images_server::ImagesServer,
    introspection::v1::introspection_server::IntrospectionServer,
    leases::v1::leases_server::LeasesServer, namespaces::v1::namespaces_server::NamespacesServer,
    snapshots::v1::snapshots_server::SnapshotsServer,
    streaming::v1::streaming_server::StreamingServer, tasks::v1::tasks_server::TasksServer,
    transfer::v1::transfer_server::TransferServer, version::v1::version_server::VersionServer,
};
use berth_store::Store;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::events::Exchange;
use crate::gc::Collector;
use crate::trim::Trimmer;
use crate::{plugins, services, telemetry, ttrpc_events};

/// How long in-flight RPCs may run after SIGTERM before the daemon stops anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn make_dir(p: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// Binds the API socket: refuses to steal it from a live daemon, replaces a stale one, and sets
/// its owner and mode (0660).
/// The process holding a lock on `file`, from `/proc/locks` (its device and inode).
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(file).ok()?;
    let (major, minor) = (libc::major(md.dev()), libc::minor(md.dev()));
    let id = format!("{major:02x}:{minor:02x}:{}", md.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 13763 fe:00:10018873 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = f.iter().position(|x| x.matches(':').count() == 2)?;
        (f[i] == id).then(|| f.get(i.checked_sub(1)?)?.parse().ok())?
    })
}

fn bind_socket(cfg: &Config) -> anyhow::Result<UnixListener> {
    bind_unix(
        &cfg.grpc.address,
        cfg.grpc.uid,
        cfg.grpc.gid,
        "grpc.address",
    )
}

/// Binds a unix socket at `path` as [`bind_socket`] does.
pub(crate) fn bind_unix(
    path: &Path,
    uid: u32,
    gid: u32,
    what: &str,
) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        make_dir(dir, 0o711)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{what}: {} is in use by a running daemon", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Counts RPCs in flight, so shutdown can wait for calls rather than for idle connections; the
/// last call to end wakes the heap trimmer.
#[derive(Debug, Clone)]
struct InFlight(Arc<AtomicUsize>, Trimmer);

struct InFlightGuard(Arc<AtomicUsize>, Trimmer);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.1.idle();
        }
    }
}

impl InFlight {
    fn new(trimmer: Trimmer) -> Self {
        InFlight(Arc::default(), trimmer)
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl<S> tower::Layer<S> for InFlight {
    type Service = InFlightService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlightService {
            inner,
            count: self.0.clone(),
            trimmer: self.1.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct InFlightService<S> {
    inner: S,
    count: Arc<AtomicUsize>,
    trimmer: Trimmer,
}

impl<S, B> tower::Service<http::Request<B>> for InFlightService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.count.fetch_add(1, Ordering::AcqRel);
        let guard = InFlightGuard(self.count.clone(), self.trimmer.clone());
        // Each call's time, at debug level under its own target (`berthd::rpc=debug`).
        let timed = tracing::enabled!(target: "berthd::rpc", tracing::Level::DEBUG)
            .then(|| (req.uri().path().to_string(), std::time::Instant::now()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            if let Some((method, start)) = timed {
                let us = start.elapsed().as_micros() as u64;
                tracing::debug!(target: "berthd::rpc", %method, us, "call answered");
            }
            r
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) async fn run(cfg: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&cfg)?;
    let result = serve(&cfg).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "berthd failed");
    }
    telemetry.shutdown();
    result
}

/// The registry client, with credentials from the config file and a Docker config.json.
fn registry_client(cfg: &Config) -> anyhow::Result<berth_image::registry::Registry> {
    use berth_image::registry::{CredentialStore, Credentials, Registry, RegistryOptions};
    let mut creds = CredentialStore::default();
    if !cfg.registry.docker_config.as_os_str().is_empty()
        && let Err(e) = creds.load_docker_config(&cfg.registry.docker_config)
    {
        tracing::warn!(error = %e, "ignoring the Docker config file");
    }
    for (host, a) in &cfg.registry.auths {
        creds.insert(
            host,
            Credentials {
                username: a.username.clone(),
                secret: a.password.clone(),
            },
        );
    }
    let opts = RegistryOptions {
        stall_timeout: Duration::from_secs(cfg.registry.stall_timeout_seconds),
        ..RegistryOptions::default()
    };
    Ok(Registry::new(opts, creds))
}

async fn serve(cfg: &Config) -> anyhow::Result<()> {
    make_dir(&cfg.root, 0o711)?;
    make_dir(&cfg.state, 0o711)?;
    let root = cfg.root.clone();
    let mut proxies: Vec<(String, Arc<dyn berth_snapshot::Snapshotter>)> = Vec::new();
    for (name, p) in &cfg.proxy_plugins {
        let proxy = crate::proxy_snapshotter::Proxy::new(name, &p.snapshotter, &p.address)
            .with_context(|| format!("proxy plugin {name}"))?;
        proxies.push((name.clone(), Arc::new(proxy)));
    }
    let store = tokio::task::spawn_blocking(move || {
        crate::trim::with_small_mmap_threshold(|| Store::open_with(&root, proxies))
    })
    .await?;
    let store = match store {
        Ok(s) => s,
        // The database file is locked (flock) while a daemon has it open: name the holder
        // instead of the storage engine's nested I/O error.
        Err(e) => match lock_holder(&cfg.db_path().join("db")) {
            Some(pid) => anyhow::bail!(
                "another berthd is using {} (pid {pid}): one root serves one daemon",
                cfg.root.display()
            ),
            None => {
                return Err(anyhow::Error::new(e)).with_context(|| {
                    format!("opening metadata store {}", cfg.db_path().display())
                });
            }
        },
    };
    let events = Arc::new(Exchange::default());
    let stale = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || crate::pull::Puller::remove_stale_leases(&store))
            .await?
            .context("removing the leases of interrupted pulls")?
    };
    if stale > 0 {
        tracing::info!(
            leases = stale,
            "removed the leases of pulls interrupted by a restart"
        );
    }
    let gc = Collector::start(store.clone());
    // Whatever a crash left behind (blobs without records, stale ingests, the mounts of
    // an apply it was in) goes at start-up.
    crate::mount::sweep_stale(&cfg.state.join("diff"));
    gc.schedule();

    let plugins = plugins::registry(cfg, &store);
    let registry = registry_client(cfg)?;
    let puller = crate::pull::Puller::new(
        store.clone(),
        registry,
        events.clone(),
        gc.clone(),
        cfg.state.join("diff"),
        cfg.registry.max_concurrent_downloads,
    );
    let streams = Arc::new(services::Streams::default());
    let runtimes = Arc::new(crate::runtime::Runtimes::new(
        store.clone(),
        &cfg.state,
        &cfg.grpc.address,
        &cfg.ttrpc_address(),
        events.clone(),
    ));
    let host_options = berth_image::registry::HostOptions {
        dir: Some(cfg.registry.config_path.clone()),
        default_scheme: None,
        insecure: cfg.registry.insecure.clone(),
    };
    let (cri_puller, cri_hosts) = (puller.clone(), host_options.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let (recv, send) = (
        cfg.grpc.max_recv_message_size,
        cfg.grpc.max_send_message_size,
    );
    // Every service gets the configured message size limits.
    macro_rules! limits {
        ($svc:expr) => {
            $svc.max_decoding_message_size(recv)
                .max_encoding_message_size(send)
        };
    }
    // The services the gRPC server serves; the CRI calls the same objects in process.
    let containers_svc = Arc::new(services::Containers::new(
        store.clone(),
        events.clone(),
        gc.clone(),
        runtimes.clone(),
    ));
    let content_svc = Arc::new(services::Content::new(
        store.clone(),
        events.clone(),
        gc.clone(),
    ));
    let images_svc = Arc::new(services::Images::new(
        store.clone(),
        events.clone(),
        gc.clone(),
    ));
    let snapshots_svc = Arc::new(services::Snapshots::new(
        store.clone(),
        events.clone(),
        gc.clone(),
    ));
    let diff_svc = Arc::new(services::Diff::new(store.clone(), cfg.state.join("diff")));
    let leases_svc = Arc::new(services::Leases::new(store.clone(), gc.clone()));
    let tasks_svc = Arc::new(services::Tasks::new(runtimes.clone()));
    let events_svc = Arc::new(services::Events::new(events.clone()));
    let in_flight = InFlight::new(Trimmer::spawn());
    let router = tonic::transport::Server::builder()
        // HTTP/2's default 64 KiB windows throttle blob streams on a local socket; let a client
        // have several MiB in flight.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(1 << 20))
        .layer(in_flight.clone())
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        .add_service(limits!(VersionServer::new(services::Version)))
        .add_service(limits!(NamespacesServer::new(services::Namespaces::new(
            store.clone(),
            events.clone()
        ))))
        .add_service(limits!(ContentServer::from_arc(content_svc.clone())))
        .add_service(limits!(ContainersServer::from_arc(containers_svc.clone())))
        .add_service(limits!(ImagesServer::from_arc(images_svc.clone())))
        .add_service(limits!(SnapshotsServer::from_arc(snapshots_svc.clone())))
        .add_service(limits!(DiffServer::from_arc(diff_svc.clone())))
        .add_service(limits!(LeasesServer::from_arc(leases_svc.clone())))
        .add_service(limits!(TasksServer::from_arc(tasks_svc.clone())))
        .add_service(limits!(TransferServer::new(services::Transfer::new(
            puller,
            streams.clone(),
            host_options
        ))))
        .add_service(limits!(StreamingServer::new(services::Streaming::new(
            streams
        ))))
        .add_service(limits!(EventsServer::from_arc(events_svc.clone())))
        .add_service(limits!(IntrospectionServer::new(
            services::Introspection::new(store.clone(), plugins)
        )))
        .add_service(health_service.clone());

    let cri = if cfg.cri.enable {
        // The image file system is the CRI snapshotter's directory, which the snapshotter makes
        // on first use: made now, so that ImageFsInfo (and the kubelet's image garbage
        // collection, which wants its capacity) sees a real directory from the first call.
        let image_fs = cfg.root.join("snapshots").join(&cfg.cri.snapshotter);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&image_fs)
                .with_context(|| format!("creating {}", image_fs.display()))?;
        }
        let c = berth_cri::Cri::new(
            cfg.cri.clone(),
            berth_cri::Dirs {
                root: cfg.root.join("io.berth.cri"),
                state: cfg.state.join("io.berth.cri"),
                image_fs,
            },
            berth_cri::Services {
                containers: containers_svc.clone(),
                tasks: tasks_svc.clone(),
                images: images_svc.clone(),
                snapshots: snapshots_svc.clone(),
                content: content_svc.clone(),
                diff: diff_svc.clone(),
                leases: leases_svc.clone(),
                events: events_svc.clone(),
            },
            Arc::new(crate::cri_host::CriHost {
                store: store.clone(),
                puller: cri_puller,
                hosts: cri_hosts,
                mounts_dir: cfg.state.join("io.berth.cri").join("mnt"),
            }),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        Some(c)
    } else {
        None
    };
    let router = match &cri {
        Some(c) => router
            .add_service(limits!(c.runtime_service()))
            .add_service(limits!(c.image_service())),
        None => router,
    };

    let listener = bind_socket(cfg)?;
    let ttrpc = ttrpc_events::start(&cfg.ttrpc_address(), events.clone())?;
    // Shims that outlived a previous daemon: reconnect (in parallel) or clean up. The CRI
    // subscribes to task events first, so that exits found by the restore reach it.
    let restore = {
        let runtimes = runtimes.clone();
        async move { runtimes.restore().await }
    };
    match &cri {
        Some(c) => c.start(restore),
        None => {
            tokio::spawn(restore);
        }
    }
    runtimes.keep_warm(cfg.runtime.warm_shims);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        UnixListenerStream::new(listener).map(|c| c.map(crate::h2_authority::wrap)),
        async {
            let _ = stop_rx.await;
        },
    ));
    // The CRI alone on a second socket, if configured: stops with the main one.
    let (cri_stop_tx, cri_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cri_server = match &cri {
        Some(c) if !cfg.cri.address.as_os_str().is_empty() => {
            let l = bind_unix(&cfg.cri.address, cfg.grpc.uid, cfg.grpc.gid, "cri.address")?;
            let r = tonic::transport::Server::builder()
                .layer(in_flight.clone())
                .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
                .add_service(limits!(c.runtime_service()))
                .add_service(limits!(c.image_service()))
                .add_service(health_service);
            Some(tokio::spawn(r.serve_with_incoming_shutdown(
                UnixListenerStream::new(l).map(|c| c.map(crate::h2_authority::wrap)),
                async {
                    let _ = cri_stop_rx.await;
                },
            )))
        }
        _ => None,
    };
    tracing::info!(
        address = %cfg.grpc.address.display(),
        root = %cfg.root.display(),
        state = %cfg.state.display(),
        version = services::version_string(),
        "berthd serving"
    );

    let mut server = server;
    let served = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); None }
        r = &mut server => Some(r),
    };
    if served.is_none() {
        let _ = stop_tx.send(());
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        // Wait for calls in flight, not for idle client connections, which may stay open.
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while !server.is_finished() && in_flight.count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    calls = in_flight.count(),
                    "calls in flight did not finish in {DRAIN_TIMEOUT:?}; stopping anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.abort();
    }
    let _ = cri_stop_tx.send(());
    if let Some(s) = cri_server {
        s.abort();
        let _ = std::fs::remove_file(&cfg.cri.address);
    }
    runtimes.stop_warm().await;
    ttrpc.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&cfg.grpc.address);
    let _ = std::fs::remove_file(cfg.ttrpc_address());
    store.flush().await.context("flushing metadata store")?;
    drop(store);
    if let Some(r) = served {
        r??;
        bail!("gRPC server stopped unexpectedly");
    }
    tracing::info!("berthd stopped");
    Ok(())
}
