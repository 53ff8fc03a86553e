//! A request's or an event's span, as `otlp.rs` exports it: what it needs
//! is taken when the work starts, only when spans are exported.

use muster_core::wire::Header;

use crate::RpcError;
use crate::wire::TraceContext;

/// What an exported span needs when its work ends (`otlp.rs`); `None`
/// when spans are not exported, so the work then pays one check.
#[cfg(feature = "otlp")]
pub(super) struct ExportedSpan {
    trace: TraceContext,
    parent: Option<u64>,
    tracestate: Option<String>,
    instance: String,
    start: std::time::SystemTime,
    what: What,
}

#[cfg(feature = "otlp")]
enum What {
    Rpc {
        service: String,
        method: String,
        request_id: String,
        transaction: Option<String>,
    },
    Event {
        topic: String,
        group: Option<String>,
    },
}

#[cfg(feature = "otlp")]
fn exported(
    trace: TraceContext,
    caller: Option<TraceContext>,
    tracestate: Option<String>,
    instance: &str,
    what: impl FnOnce() -> What,
) -> Option<ExportedSpan> {
    if !crate::otlp::enabled() || !trace.sampled {
        return None;
    }
    Some(ExportedSpan {
        trace,
        parent: caller.map(|c| c.span_id),
        tracestate,
        instance: instance.to_owned(),
        start: std::time::SystemTime::now(),
        what: what(),
    })
}

/// A request's span.
#[cfg(feature = "otlp")]
pub(super) fn exported_span(
    service: &str,
    method: &str,
    header: &Header,
    instance: &str,
    trace: TraceContext,
    caller: Option<TraceContext>,
) -> Option<ExportedSpan> {
    exported(trace, caller, header.tracestate.clone(), instance, || {
        What::Rpc {
            service: service.to_owned(),
            method: method.to_owned(),
            request_id: header.id.clone(),
            transaction: header.transaction.clone(),
        }
    })
}

/// An event's span: its handlers, as one consumer.
#[cfg(feature = "otlp")]
pub(super) fn exported_event_span(
    topic: &str,
    group: Option<&str>,
    instance: &str,
    trace: TraceContext,
    caller: Option<TraceContext>,
) -> Option<ExportedSpan> {
    exported(trace, caller, None, instance, || What::Event {
        topic: topic.to_owned(),
        group: group.map(str::to_owned),
    })
}

#[cfg(feature = "otlp")]
impl ExportedSpan {
    pub(super) fn end(self, error: Option<&RpcError>) {
        let error = error.map(|e| (e.code, e.message.as_str()));
        let done = crate::otlp::Done {
            trace: self.trace,
            parent: self.parent,
            tracestate: self.tracestate.as_deref(),
            instance: &self.instance,
            start: self.start,
            error,
        };
        match &self.what {
            What::Rpc {
                service,
                method,
                request_id,
                transaction,
            } => {
                crate::otlp::record_rpc(&done, service, method, request_id, transaction.as_deref())
            }
            What::Event { topic, group } => {
                crate::otlp::record_event(&done, topic, group.as_deref());
            }
        }
    }
}

/// Without the `otlp` feature no span is exported.
#[cfg(not(feature = "otlp"))]
pub(super) struct ExportedSpan;

#[cfg(not(feature = "otlp"))]
pub(super) fn exported_span(
    _: &str,
    _: &str,
    _: &Header,
    _: &str,
    _: TraceContext,
    _: Option<TraceContext>,
) -> Option<ExportedSpan> {
    None
}

#[cfg(not(feature = "otlp"))]
pub(super) fn exported_event_span(
    _: &str,
    _: Option<&str>,
    _: &str,
    _: TraceContext,
    _: Option<TraceContext>,
) -> Option<ExportedSpan> {
    None
}

#[cfg(not(feature = "otlp"))]
impl ExportedSpan {
    pub(super) fn end(self, _: Option<&RpcError>) {}
}
