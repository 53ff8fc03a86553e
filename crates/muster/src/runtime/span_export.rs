//! A request's span, as `otlp.rs` exports it: what it needs is taken
//! when the request starts, only when spans are exported.

use muster_core::wire::Header;

use crate::RpcError;
/// What a request's exported span needs when it ends (`otlp.rs`); `None`
/// when spans are not exported, so a request then pays one check.
#[cfg(feature = "otlp")]
pub(super) struct ExportedSpan {
    service: String,
    method: String,
    request_id: String,
    instance: String,
    transaction: Option<String>,
    tracestate: Option<String>,
    trace: crate::wire::TraceContext,
    parent: Option<u64>,
    start: std::time::SystemTime,
}

#[cfg(feature = "otlp")]
pub(super) fn exported_span(
    service: &str,
    method: &str,
    header: &Header,
    instance: &str,
    trace: crate::wire::TraceContext,
    caller: Option<crate::wire::TraceContext>,
) -> Option<ExportedSpan> {
    if !crate::otlp::enabled() || !trace.sampled {
        return None;
    }
    Some(ExportedSpan {
        service: service.to_owned(),
        method: method.to_owned(),
        request_id: header.id.clone(),
        instance: instance.to_owned(),
        transaction: header.transaction.clone(),
        tracestate: header.tracestate.clone(),
        trace,
        parent: caller.map(|c| c.span_id),
        start: std::time::SystemTime::now(),
    })
}

#[cfg(feature = "otlp")]
impl ExportedSpan {
    pub(super) fn end(self, error: Option<&RpcError>) {
        crate::otlp::record(crate::otlp::RpcSpan {
            trace: self.trace,
            parent: self.parent,
            tracestate: self.tracestate.as_deref(),
            service: &self.service,
            method: &self.method,
            request_id: &self.request_id,
            instance: &self.instance,
            transaction: self.transaction.as_deref(),
            start: self.start,
            error: error.map(|e| (e.code, e.message.as_str())),
        });
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
    _: crate::wire::TraceContext,
    _: Option<crate::wire::TraceContext>,
) -> Option<ExportedSpan> {
    None
}

#[cfg(not(feature = "otlp"))]
impl ExportedSpan {
    pub(super) fn end(self, _: Option<&RpcError>) {}
}
