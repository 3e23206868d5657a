//! ttrpc vs gRPC (tonic) on a unix socket: the same unary call (`Events.Forward` with the same
//! envelope) served and called both ways in one run. Prints calls/s and latency percentiles, and
//! the ratios. Server and client run on separate single-threaded runtimes, like two processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_api::containerd::services::events::ttrpc::v1 as ttrpc_events;
use berth_api::containerd::services::events::v1 as grpc_events;
use berth_ttrpc::{CallOptions, Client, Context, Server, Status};
use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

struct TtrpcSink;

impl ttrpc_events::events_ttrpc::Events for TtrpcSink {
    async fn forward(
        &self,
        _ctx: Context,
        req: ttrpc_events::ForwardRequest,
    ) -> Result<(), Status> {
        std::hint::black_box(req);
        Ok(())
    }
}

struct GrpcSink;

#[tonic::async_trait]
impl grpc_events::events_server::Events for GrpcSink {
    async fn publish(
        &self,
        _: tonic::Request<grpc_events::PublishRequest>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        Ok(tonic::Response::new(()))
    }
    async fn forward(
        &self,
        req: tonic::Request<grpc_events::ForwardRequest>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        std::hint::black_box(req);
        Ok(tonic::Response::new(()))
    }
    type SubscribeStream = tokio_stream::Empty<Result<grpc_events::Envelope, tonic::Status>>;
    async fn subscribe(
        &self,
        _: tonic::Request<grpc_events::SubscribeRequest>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        Ok(tonic::Response::new(tokio_stream::empty()))
    }
}

fn envelope() -> (ttrpc_events::ForwardRequest, grpc_events::ForwardRequest) {
    let event = prost_types::Any {
        type_url: "containerd.events.TaskExit".into(),
        value: vec![7u8; 96],
    };
    let ts = prost_types::Timestamp {
        seconds: 1_790_000_000,
        nanos: 42,
    };
    (
        ttrpc_events::ForwardRequest {
            envelope: Some(ttrpc_events::Envelope {
                timestamp: Some(ts),
                namespace: "default".into(),
                topic: "/tasks/exit".into(),
                event: Some(event.clone()),
            }),
        },
        grpc_events::ForwardRequest {
            envelope: Some(grpc_events::Envelope {
                timestamp: Some(ts),
                namespace: "default".into(),
                topic: "/tasks/exit".into(),
                event: Some(event),
            }),
        },
    )
}

struct Stats {
    calls_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `concurrency` callers for `dur`, each timing its calls.
fn drive<F, Fut>(rt: &tokio::runtime::Runtime, dur: Duration, concurrency: usize, call: F) -> Stats
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async move {
        // Warm-up.
        for _ in 0..200 {
            call().await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let call = call.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    call().await;
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        tokio::time::sleep(dur).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("caller"));
        }
        let elapsed = start.elapsed();
        all.sort();
        Stats {
            calls_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
            p50: percentile(&all, 0.50),
            p99: percentile(&all, 0.99),
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dur = Duration::from_secs(secs);
    let dir = tempfile::tempdir()?;
    let ttrpc_sock = dir.path().join("ttrpc.sock");
    let grpc_sock = dir.path().join("grpc.sock");

    // Servers on their own thread and runtime.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let (ttrpc_sock, grpc_sock) = (ttrpc_sock.clone(), grpc_sock.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let l = tokio::net::UnixListener::bind(&ttrpc_sock).expect("bind ttrpc");
                let _h = Server::new()
                    .register(ttrpc_events::events_ttrpc::EventsServer::new(TtrpcSink))
                    .start(l);
                let gl = tokio::net::UnixListener::bind(&grpc_sock).expect("bind grpc");
                let grpc = tonic::transport::Server::builder()
                    .add_service(grpc_events::events_server::EventsServer::new(GrpcSink))
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(gl));
                ready_tx.send(()).expect("ready");
                grpc.await.expect("grpc server");
            })
        });
    }
    ready_rx.recv()?;

    let client_rt = runtime();
    let (t_req, g_req) = envelope();
    let ttrpc = client_rt.block_on(Client::connect(&ttrpc_sock))?;
    let ttrpc = ttrpc_events::events_ttrpc::EventsClient::new(ttrpc);
    let channel = client_rt.block_on(
        Endpoint::try_from("http://bench.local")?.connect_with_connector(tower::service_fn(
            move |_: Uri| {
                let p = grpc_sock.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            },
        )),
    )?;
    let grpc = grpc_events::events_client::EventsClient::new(channel);

    println!(
        "unary Events.Forward over a unix socket, {secs} s per row; client and server on one thread each"
    );
    println!(
        "{:<10} {:>11} {:>12} {:>10} {:>10}",
        "transport", "concurrency", "calls/s", "p50", "p99"
    );
    let mut ratios = Vec::new();
    for concurrency in [1usize, 16] {
        let t = {
            let c = ttrpc.clone();
            let r = t_req.clone();
            drive(&client_rt, dur, concurrency, move || {
                let (c, r) = (c.clone(), r.clone());
                async move {
                    c.forward(&CallOptions::default(), &r)
                        .await
                        .expect("ttrpc call");
                }
            })
        };
        let g = {
            let c = grpc.clone();
            let r = g_req.clone();
            drive(&client_rt, dur, concurrency, move || {
                let (mut c, r) = (c.clone(), r.clone());
                async move {
                    c.forward(r).await.expect("grpc call");
                }
            })
        };
        for (name, s) in [("ttrpc", &t), ("grpc", &g)] {
            println!(
                "{:<10} {:>11} {:>12.0} {:>8.1}µs {:>8.1}µs",
                name,
                concurrency,
                s.calls_per_sec,
                s.p50.as_secs_f64() * 1e6,
                s.p99.as_secs_f64() * 1e6
            );
        }
        ratios.push((
            concurrency,
            t.calls_per_sec / g.calls_per_sec,
            g.p50.as_secs_f64() / t.p50.as_secs_f64(),
        ));
    }
    for (c, thr, lat) in ratios {
        println!(
            "ratio ttrpc/grpc at concurrency {c}: {thr:.2}x calls/s, {lat:.2}x lower p50 latency"
        );
    }
    Ok(())
}
