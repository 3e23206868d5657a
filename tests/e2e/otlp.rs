//! OpenTelemetry export: berthd configured with an OTLP endpoint sends its RPC spans there.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use berth_e2e::{Daemon, ok};
use tokio::sync::mpsc;
use tonic::codegen::http;

// Just enough of opentelemetry.proto.collector.trace.v1 to read span names; prost skips the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Span {
    #[prost(string, tag = "5")]
    name: String,
}

#[derive(Clone)]
struct Collector(mpsc::UnboundedSender<String>);

impl tonic::server::NamedService for Collector {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Export(mpsc::UnboundedSender<String>);

impl tonic::server::UnaryService<ExportRequest> for Export {
    type Response = ();
    type Future = std::future::Ready<Result<tonic::Response<()>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<ExportRequest>) -> Self::Future {
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let _ = self.0.send(s.name);
                }
            }
        }
        std::future::ready(Ok(tonic::Response::new(())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Collector {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let tx = self.0.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<(), ExportRequest>::default());
            Ok(grpc.unary(Export(tx), req).await)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_are_exported_over_otlp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Collector(tx))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let config =
        format!("[otlp]\nendpoint = \"http://127.0.0.1:{port}\"\nservice_name = \"berthd-e2e\"\n");
    let mut d = tokio::task::spawn_blocking(move || Daemon::start_with_config(&config, &[]))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let sock = d.sock.clone();
        move || {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(sock)
                .args(["namespaces", "create", "traced"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    ok(out);
    // Shutdown flushes the batch exporter.
    let d = tokio::task::spawn_blocking(move || {
        let st = d.stop();
        assert!(st.success(), "{}", d.log());
        d
    })
    .await
    .unwrap();
    let mut names = Vec::new();
    while let Ok(Some(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await
    {
        names.push(n);
        if names.iter().any(|n| n == "rpc") {
            break;
        }
    }
    assert!(
        names.iter().any(|n| n == "rpc"),
        "spans received: {names:?}\n{}",
        d.log()
    );
    server.abort();
}
