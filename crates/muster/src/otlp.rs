//! Spans exported over OTLP (`docs/tracing.md`). When the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! is set, every request a service answers becomes a server span (and
//! every traced event it handles a consumer span), handed when the work
//! ends to a batch processor that sends it from a thread
//! of its own (OTLP over HTTP, protobuf): off the request path. The other
//! standard variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`) apply. Unset, nothing is
//! built, and a request pays one check.
//!
//! The span ids are muster's own (those carried in `traceparent`), so a
//! span is made as the SDK's `SpanData` and given to the processor; the
//! SDK's tracer would choose ids of its own.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

use crate::wire::TraceContext;

/// The environment variables that turn export on.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

static EXPORT: OnceLock<Export> = OnceLock::new();

struct Export {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

/// Flushes the spans not sent yet when dropped (a service's end).
#[derive(Debug)]
#[must_use = "dropping the guard flushes and stops the export"]
pub struct OtlpGuard(());

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        if let Some(e) = EXPORT.get()
            && let Err(err) = e.processor.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %err, "OTLP: spans not sent at the end");
        }
    }
}

/// Starts exporting this process's spans when the environment asks for
/// it (`OTEL_EXPORTER_OTLP_ENDPOINT`), under `service_name` unless
/// `OTEL_SERVICE_NAME` says otherwise. `None` when it does not, or when
/// the exporter cannot be made (logged). Services run with
/// [`Service::run`](crate::Service::run) call it themselves; a program
/// that starts services on a transport of its own calls it once, outside
/// an async context, and keeps the guard until it ends.
pub fn install(service_name: &str) -> Option<OtlpGuard> {
    if !ENDPOINT_VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
    {
        return None;
    }
    if EXPORT.get().is_some() {
        return Some(OtlpGuard(()));
    }
    // The exporter's HTTP client runs a runtime of its own, which must
    // not be made inside another: made on a thread of its own.
    let built = std::thread::spawn(|| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
    })
    .join();
    let exporter = match built {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "OTLP: no exporter; spans are not exported");
            return None;
        }
        Err(_) => return None,
    };
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    processor.set_resource(&resource.build());
    let scope = InstrumentationScope::builder("muster")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let _ = EXPORT.set(Export { processor, scope });
    Some(OtlpGuard(()))
}

/// True when spans are exported: a request then notes its start time.
pub(crate) fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// What every exported span has: its place in the trace, where it ran,
/// when, and how it ended.
pub(crate) struct Done<'a> {
    pub(crate) trace: TraceContext,
    pub(crate) parent: Option<u64>,
    pub(crate) tracestate: Option<&'a str>,
    pub(crate) instance: &'a str,
    pub(crate) start: SystemTime,
    pub(crate) error: Option<(i64, &'a str)>,
}

/// An answered request, as its server span, with the RPC semantic
/// conventions for JSON-RPC. (The strings are moved into the attributes,
/// not copied: export is on the path of every sampled request.)
pub(crate) fn record_rpc(
    done: &Done<'_>,
    service: String,
    method: String,
    request_id: String,
    transaction: Option<String>,
) {
    let name = format!("{service}/{method}");
    let mut attributes = vec![
        KeyValue::new("rpc.system", "jsonrpc"),
        KeyValue::new("rpc.jsonrpc.version", "2.0"),
        KeyValue::new("rpc.service", service),
        KeyValue::new("rpc.method", method),
        KeyValue::new("rpc.jsonrpc.request_id", request_id),
    ];
    if let Some(t) = transaction {
        attributes.push(KeyValue::new("muster.transaction", t));
    }
    if let Some((code, message)) = done.error {
        attributes.push(KeyValue::new("rpc.jsonrpc.error_code", code));
        attributes.push(KeyValue::new(
            "rpc.jsonrpc.error_message",
            message.to_owned(),
        ));
    }
    emit(done, SpanKind::Server, name, attributes);
}

/// The messaging semantic conventions of a consumer span that processes
/// what arrived on `destination` (a topic or a queue).
fn processing(destination: String) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", "muster"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", destination),
    ]
}

/// An event's handlers, as one consumer span.
pub(crate) fn record_event(done: &Done<'_>, topic: String, group: Option<String>) {
    let name = format!("process {topic}");
    let mut attributes = processing(topic);
    if let Some(g) = group {
        attributes.push(KeyValue::new("messaging.consumer.group.name", g));
    }
    emit(done, SpanKind::Consumer, name, attributes);
}

/// A job's handler, as a consumer span of its queue (the job's id is the
/// message id).
pub(crate) fn record_job(
    done: &Done<'_>,
    queue: String,
    id: String,
    attempt: u32,
    transaction: Option<String>,
) {
    let name = format!("process {queue}");
    let mut attributes = processing(queue);
    attributes.push(KeyValue::new("messaging.message.id", id));
    attributes.push(KeyValue::new("muster.job.attempt", i64::from(attempt)));
    if let Some(t) = transaction {
        attributes.push(KeyValue::new("muster.transaction", t));
    }
    emit(done, SpanKind::Consumer, name, attributes);
}

/// A scheduled run, the first span of its trace; `fire_ms` is the fire
/// time it ran for (none for a run at start-up).
pub(crate) fn record_schedule(done: &Done<'_>, name: String, fire_ms: Option<i64>) {
    let mut attributes = vec![KeyValue::new("muster.schedule", name.clone())];
    if let Some(f) = fire_ms {
        attributes.push(KeyValue::new("muster.schedule.fire_time_ms", f));
    }
    emit(done, SpanKind::Internal, name, attributes);
}

/// Hands a span that ended to the exporter (nothing when export is off
/// or the trace is not sampled).
fn emit(done: &Done<'_>, kind: SpanKind, name: String, mut attributes: Vec<KeyValue>) {
    let Some(export) = EXPORT.get() else { return };
    if !done.trace.sampled {
        return;
    }
    let state = done
        .tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = SpanContext::new(
        TraceId::from_bytes(done.trace.trace_id.to_be_bytes()),
        SpanId::from_bytes(done.trace.span_id.to_be_bytes()),
        TraceFlags::SAMPLED,
        false,
        state,
    );
    attributes.push(KeyValue::new("muster.instance", done.instance.to_owned()));
    let status = match done.error {
        Some((_, message)) => Status::error(message.to_owned()),
        None => Status::Unset,
    };
    export.processor.on_end(SpanData {
        span_context: context,
        parent_span_id: done
            .parent
            .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
        parent_span_is_remote: done.parent.is_some(),
        span_kind: kind,
        name: name.into(),
        start_time: done.start,
        end_time: SystemTime::now(),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: export.scope.clone(),
    });
}
