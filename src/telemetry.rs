//! Logs and traces: `tracing` with text or JSON output on stderr (under JSON,
//! panics are logged as JSON events too), filtered by
//! `RUST_LOG` or `--log-level`, plus OpenTelemetry traces exported over
//! OTLP/HTTP when (and only when) `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
//!
//! Spans of the node (all with target `relay::*`):
//!
//! | span | level | fields |
//! |---|---|---|
//! | `handshake` | info | `remote`, `ip`, `node`, `user`, `encoding`, `outcome` |
//! | `session` | info | `user`, `node`, `session`, `remote`, `ip`, `encoding` (holds the `session closed` event) |
//! | `command` | debug | `type`, `room`, `user`, `session`, `result` (a root span: one trace per command) |
//! | `publish` | debug | `room`, `id` (the store-and-publish call of a `send` or of `/api/publish`) |
//! | `redis` | debug | `op`, `error` (one Redis round trip, only inside another span) |
//! | `deliver` | debug | `room`, `id`, `recipients` (fan-out of a room message on a node) |
//!
//! The log output (`fmt` layer) sees only what the log filter enables, so the
//! debug spans cost nothing at the default `info` level. The OpenTelemetry
//! layer has its own filter: every `relay` span down to debug, and `relay`
//! events down to info (as span events), so traces are complete whatever the
//! log level. Without the OTLP environment variables no OpenTelemetry layer
//! is installed at all.
//!
//! A published message carries its trace context across the backplane as a
//! W3C `traceparent` string: [`traceparent`] reads it from the `publish` span
//! on the sending node, [`set_remote_parent`] makes it the parent of the
//! `deliver` span on every receiving node. Both are no-ops (no allocation)
//! while OpenTelemetry is off.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Level, Metadata, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// The W3C trace-context header name, and the key of the propagated value.
const TRACEPARENT: &str = "traceparent";

/// How long [`Telemetry::shutdown`] waits for the last spans to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`init`] installed; flush it with [`Telemetry::shutdown`] before the
/// process exits.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether OpenTelemetry traces are exported.
    pub fn otel_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter (bounded by
    /// a few seconds). Call it outside any async runtime, after the node
    /// stopped.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "flushing OpenTelemetry traces failed");
            }
        }
    }
}

/// Installs the global subscriber for logs only (no OpenTelemetry), e.g. for
/// the terminal chat client. Safe to call once per process.
pub fn init(format: LogFormat, level: &str) -> Telemetry {
    install(format, level, None);
    Telemetry::default()
}

/// Installs the global subscriber of a node: logs, plus OpenTelemetry traces
/// when the standard OTLP environment variables ask for them. `node_id`
/// becomes the `service.instance.id` and `relay.node` resource attributes.
/// An exporter that cannot be built is logged and traces stay off.
pub fn init_node(format: LogFormat, level: &str, node_id: &str) -> Telemetry {
    crate::auth::jwks::install_crypto_provider();
    let provider = if otlp_requested(|k| std::env::var(k).ok()) {
        match tracer_provider(node_id) {
            Ok(p) => Some(p),
            Err(e) => {
                install(format, level, None);
                tracing::error!(error = %e, "OpenTelemetry exporter not started; traces are off");
                return Telemetry::default();
            }
        }
    } else {
        None
    };
    install(format, level, provider.as_ref());
    if provider.is_some() {
        tracing::info!(
            node = node_id,
            "exporting OpenTelemetry traces over OTLP/HTTP"
        );
    }
    Telemetry { provider }
}

/// Whether the environment names an OTLP endpoint for traces.
fn otlp_requested(var: impl Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| var(k).is_some_and(|v| !v.trim().is_empty()))
        && !var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The OTLP protocol when the environment does not choose one: the OTel
/// default `http/protobuf` (the crate would otherwise prefer JSON).
fn protocol_from_env(var: impl Fn(&str) -> Option<String>) -> Option<Protocol> {
    let chosen = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .any(|k| var(k).is_some_and(|v| !v.trim().is_empty()));
    if chosen {
        None
    } else {
        Some(Protocol::HttpBinary)
    }
}

/// Builds the tracer provider: OTLP/HTTP exporter (endpoint, protocol,
/// headers, timeout from the standard env vars) behind a batch processor
/// (`OTEL_BSP_*`), sampler from `OTEL_TRACES_SAMPLER`, and the resource.
fn tracer_provider(node_id: &str) -> Result<SdkTracerProvider, String> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(protocol) = protocol_from_env(|k| std::env::var(k).ok()) {
        builder = builder.with_protocol(protocol);
    }
    let exporter = builder.build().map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(node_id))
        .build())
}

/// `service.name` (`OTEL_SERVICE_NAME`, default `relay`), `service.version`,
/// `service.instance.id` and `relay.node` (the node id), then anything in
/// `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(node_id: &str) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_service_name("relay")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", node_id.to_owned()),
            KeyValue::new("relay.node", node_id.to_owned()),
        ])
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// What the OpenTelemetry layer records: `relay` spans down to debug and
/// `relay` events down to info. Nothing of other crates (in particular not
/// the exporter's own HTTP client).
fn otel_interest(meta: &Metadata<'_>) -> bool {
    let ours = meta.target() == "relay" || meta.target().starts_with("relay::");
    let max = if meta.is_span() {
        Level::DEBUG
    } else {
        Level::INFO
    };
    ours && *meta.level() <= max
}

fn install(format: LogFormat, level: &str, provider: Option<&SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let otel = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("relay"))
            .with_filter(filter_fn(otel_interest).with_max_level_hint(LevelFilter::DEBUG))
    });
    // Colours only for a person at a terminal, not in files or collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let _ = Registry::default().with(otel).with(fmt).try_init();
    if format == LogFormat::Json {
        // Every line on stderr stays JSON: panics too, as `error` events.
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(panic = %message, location, "panicked");
        }));
    }
}

/// Captures the `traceparent` value a propagator injects.
struct Capture(Option<String>);

impl Injector for Capture {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// A carrier holding one `traceparent` value.
struct Carrier<'a>(&'a str);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The W3C `traceparent` of `span`, to send along with a published message.
/// `None` (without allocating) when the span is disabled or OpenTelemetry
/// is off.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut capture = Capture(None);
    TraceContextPropagator::new().inject_context(&cx, &mut capture);
    capture.0
}

/// Makes the remote span named by a W3C `traceparent` the parent of `span`
/// (call it before the span is first entered). A no-op when the span is
/// disabled, OpenTelemetry is off, or the value is malformed.
pub fn set_remote_parent(span: &Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Carrier(traceparent));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        move |k| map.get(k).map(|v| (*v).to_owned())
    }

    #[test]
    fn otlp_only_with_an_endpoint() {
        assert!(!otlp_requested(env(&[])));
        assert!(!otlp_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(otlp_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318"
        )])));
        assert!(otlp_requested(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4318/v1/traces"
        )])));
        assert!(!otlp_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])));
    }

    #[test]
    fn protobuf_is_the_default_protocol() {
        assert_eq!(protocol_from_env(env(&[])), Some(Protocol::HttpBinary));
        assert_eq!(
            protocol_from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])),
            None,
            "the exporter reads the variable itself"
        );
    }

    #[test]
    fn otel_filter_keeps_relay_spans_only() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CS: Cs = Cs;
        let meta = |target: &'static str, level, kind| {
            Metadata::new(
                "x",
                target,
                level,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&CS)),
                kind,
            )
        };
        assert!(otel_interest(&meta(
            "relay::node",
            Level::DEBUG,
            Kind::SPAN
        )));
        assert!(!otel_interest(&meta(
            "relay::node",
            Level::TRACE,
            Kind::SPAN
        )));
        assert!(otel_interest(&meta(
            "relay::session",
            Level::INFO,
            Kind::EVENT
        )));
        assert!(!otel_interest(&meta(
            "relay::session",
            Level::DEBUG,
            Kind::EVENT
        )));
        assert!(!otel_interest(&meta(
            "hyper::client",
            Level::INFO,
            Kind::SPAN
        )));
        assert!(!otel_interest(&meta("relayx", Level::INFO, Kind::SPAN)));
    }

    #[test]
    fn traceparent_is_none_without_opentelemetry() {
        // No subscriber with an OpenTelemetry layer in unit tests.
        let span = tracing::info_span!("publish");
        assert_eq!(traceparent(&span), None);
        set_remote_parent(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
    }

    #[test]
    fn traceparent_round_trips_through_the_propagator() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = TraceContextPropagator::new().extract(&Carrier(tp));
        assert!(cx.span().span_context().is_valid());
        let mut capture = Capture(None);
        TraceContextPropagator::new().inject_context(&cx, &mut capture);
        assert_eq!(capture.0.as_deref(), Some(tp));
        let bad = TraceContextPropagator::new().extract(&Carrier("garbage"));
        assert!(!bad.span().span_context().is_valid());
    }
}
