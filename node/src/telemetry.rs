//! Logs and traces.
//!
//! Logs: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default
//! `info,openraft=warn,herald_trace=off`). Leader and membership changes, snapshots and clock
//! corrections each log one line at info.
//!
//! Traces: when an OTLP collector is named (`[telemetry] otlp_endpoint` in
//! the config, else `OTEL_EXPORTER_OTLP_ENDPOINT`), spans are exported over
//! OTLP/gRPC by a batch processor, with the resource attributes
//! `service.name = herald-node` and `service.instance.id = <node id>`, and
//! W3C trace context crosses node boundaries in gRPC metadata. With no
//! collector named, no exporter, no propagator and no span export exist.
//! [`shutdown`] flushes what is buffered; `server::run` calls it last.
//!
//! Per-request spans (`request`, `propose`, `raft.propose`, `forward`,
//! `raft.apply`) have the target [`SPAN_TARGET`] and exist only for the
//! exporter: the log filter turns that target off unless `RUST_LOG` names
//! it, so a node that exports no traces creates no span per request. (They
//! used to be on for the log layer too, which formatted their fields into
//! strings on every write for log lines that almost never came: ~11 % of a
//! busy leader's CPU.)

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TelemetryConfig;

/// The env var that names an OTLP collector when the config does not.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Target of the per-request spans; see the module doc.
pub const SPAN_TARGET: &str = "herald_trace";

/// Log filter when `RUST_LOG` is unset.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,herald_trace=off";

/// What the span exporter records: what the default log filter records,
/// plus the per-request spans.
const TRACE_FILTER: &str = "info,openraft=warn,herald_trace=info";

/// The exporting provider, when traces are exported; `shutdown` flushes it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Propagates W3C trace context; set only when traces are exported, so an
/// untraced cluster sends no `traceparent`.
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

/// Log line format (part of `[telemetry]`, so defined with the config).
pub use crate::config::LogFormat;

/// The collector to export to: the config's, else the env var's.
pub fn otlp_endpoint(config: &TelemetryConfig) -> Option<String> {
    config
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var(OTLP_ENDPOINT_ENV).ok())
        .filter(|e| !e.trim().is_empty())
}

/// Installs the global subscriber: logs in `format`, and span export when a
/// collector is named. Call once, inside the tokio runtime (the exporter's
/// gRPC channel lives on it).
pub fn init(format: LogFormat, config: &TelemetryConfig, node_id: u64) -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    // Only the layers in use, each with its own filter: a span or event no
    // layer wants is then never built (an absent `Option` layer would count
    // as wanting everything).
    let mut layers: Vec<Boxed> = Vec::new();
    let log_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    layers.push(match format {
        LogFormat::Text => log.with_filter(log_filter).boxed(),
        LogFormat::Json => log.json().with_filter(log_filter).boxed(),
    });
    let endpoint = otlp_endpoint(config);
    if let Some(endpoint) = &endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("herald-node")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                node_id.to_string(),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("herald-node");
        let _ = PROVIDER.set(provider);
        let _ = PROPAGATOR.set(TraceContextPropagator::new());
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::EnvFilter::new(TRACE_FILTER))
                .boxed(),
        );
    }
    tracing_subscriber::registry().with(layers).try_init()?;
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP/gRPC");
    }
    Ok(())
}

/// Flushes buffered spans and stops the exporter. Waits at most a few
/// seconds for an unreachable collector.
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        // The SDK blocks while it flushes: keep that off the async workers.
        let r = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(e)) = r {
            eprintln!("flushing traces: {e}");
        }
    }
}

struct HeaderExtract<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInject<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The remote parent a request names in its `traceparent` header, when
/// traces are exported and it names one.
pub fn extract_context(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    let propagator = PROPAGATOR.get()?;
    headers.get("traceparent")?;
    Some(propagator.extract(&HeaderExtract(headers)))
}

/// Makes `span` a child of a remote parent.
pub fn set_parent(span: &tracing::Span, cx: opentelemetry::Context) {
    let _ = span.set_parent(cx);
}

/// Adds the current span's trace context and the request id to an outgoing
/// peer call, so the leader's spans join the caller's trace.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(id) = crate::api::layer::current_request_id()
        && let Ok(v) = id.parse()
    {
        metadata.insert(crate::api::layer::REQUEST_ID, v);
    }
    if let Some(propagator) = PROPAGATOR.get() {
        let cx = tracing::Span::current().context();
        propagator.inject_context(&cx, &mut MetadataInject(metadata));
    }
}
