//! Logging (text or JSON through `tracing`) and optional OpenTelemetry trace export over OTLP/gRPC.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Keeps the exporter alive; flushes pending spans when shut down.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub(crate) fn shutdown(self) {
        if let Some(Err(e)) = self.provider.map(|p| p.shutdown()) {
            eprintln!("berthd: flushing traces: {e}");
        }
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime when OTLP is configured.
pub(crate) fn init(cfg: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&cfg.log.level).context("log.level")?;
    let fmt = match cfg.log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut provider = None;
    let otel = if cfg.otlp.endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.otlp.endpoint.clone())
            .build()
            .context("otlp.endpoint: building the OTLP exporter")?;
        let p = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.otlp.sampling_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(cfg.otlp.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = p.tracer("berthd");
        provider = Some(p);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}
