//! Logging (text or JSON through `tracing`) and optional OpenTelemetry trace export over OTLP/gRPC.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// Parses `log.level`: comma-separated directives, each a level (`error`, `warn`, `info`,
/// `debug`, `trace`, `off`) or `target=level` for a module path (`info,berthd::runtime=debug`).
/// Anything else is an error naming the directive, so a typo never silently changes what is logged.
pub(crate) fn log_filter(spec: &str) -> anyhow::Result<Targets> {
    let level = |s: &str| -> anyhow::Result<LevelFilter> {
        s.trim().parse().map_err(|_| {
            anyhow::anyhow!("{s:?} is not a level (off, error, warn, info, debug, trace)")
        })
    };
    let mut targets = Targets::new();
    let mut any = false;
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        match directive.split_once('=') {
            None => targets = targets.with_default(level(directive)?),
            Some((target, lvl)) => {
                let target = target.trim();
                let path_ok = !target.is_empty()
                    && target.split("::").all(|seg| {
                        !seg.is_empty()
                            && seg
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    });
                if !path_ok {
                    anyhow::bail!("{directive:?}: {target:?} is not a module path");
                }
                targets = targets.with_target(target, level(lvl)?);
            }
        }
    }
    if !any {
        anyhow::bail!("empty filter");
    }
    Ok(targets)
}

/// Installs the global subscriber. Must run inside the tokio runtime when OTLP is configured.
pub(crate) fn init(cfg: &Config) -> anyhow::Result<Telemetry> {
    let filter = log_filter(&cfg.log.level).context("log.level")?;
    let fmt = match cfg.log.format {
        // Colour only on a terminal: a log file or journald gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn log_filters_take_levels_and_targets() {
        let f = log_filter("warn").unwrap();
        assert!(f.would_enable("berthd::runtime", &Level::WARN));
        assert!(!f.would_enable("berthd::runtime", &Level::INFO));
        let f = log_filter(" info , berthd::runtime=debug,h2=off ").unwrap();
        assert!(f.would_enable("berthd::runtime::shim", &Level::DEBUG));
        assert!(!f.would_enable("berthd::server", &Level::DEBUG));
        assert!(f.would_enable("berthd::server", &Level::INFO));
        assert!(!f.would_enable("h2::proto", &Level::ERROR));
        assert!(
            log_filter("TRACE")
                .unwrap()
                .would_enable("x", &Level::TRACE)
        );
    }

    #[test]
    fn bad_log_filters_name_the_directive() {
        for (spec, needle) in [
            ("", "empty"),
            (" , ", "empty"),
            ("inf", "\"inf\" is not a level"),
            ("info,berthd=loud", "\"loud\" is not a level"),
            ("[[[", "not a level"),
            ("berthd[span]=debug", "not a module path"),
            ("=debug", "not a module path"),
            ("a::::b=info", "not a module path"),
        ] {
            let e = format!("{:#}", log_filter(spec).unwrap_err());
            assert!(e.contains(needle), "{spec:?}: {e}");
        }
    }
}
