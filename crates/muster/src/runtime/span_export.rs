//! A request's, an event's or a job's span, as `otlp.rs` exports it: what it needs
//! is taken when the work starts, only when spans are exported (never
//! without the `otlp` feature).

use muster_core::wire::Header;

use crate::RpcError;
use crate::wire::TraceContext;

/// What an exported span needs when its work ends; `None` when spans are
/// not exported, so the work then pays one check. (Without the `otlp`
/// feature it is never made, so its fields are never read.)
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(super) struct ExportedSpan {
    trace: TraceContext,
    parent: Option<u64>,
    tracestate: Option<String>,
    instance: String,
    start: std::time::SystemTime,
    what: What,
}

#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
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
    Schedule {
        name: String,
        fire_ms: Option<i64>,
    },
    Job {
        queue: String,
        id: String,
        attempt: u32,
        transaction: Option<String>,
    },
}

fn enabled() -> bool {
    #[cfg(feature = "otlp")]
    return crate::otlp::enabled();
    #[cfg(not(feature = "otlp"))]
    false
}

fn exported(
    trace: TraceContext,
    caller: Option<TraceContext>,
    tracestate: Option<String>,
    instance: &str,
    what: impl FnOnce() -> What,
) -> Option<ExportedSpan> {
    if !enabled() || !trace.sampled {
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

/// A job's span: its handler, as a consumer of the queue.
pub(super) fn exported_job_span(
    queue: &str,
    job: &muster_core::queue::Job,
    instance: &str,
    trace: TraceContext,
    caller: Option<TraceContext>,
) -> Option<ExportedSpan> {
    exported(trace, caller, None, instance, || What::Job {
        queue: queue.to_owned(),
        id: job.id.clone(),
        attempt: job.attempt,
        transaction: job.transaction.clone(),
    })
}

/// A scheduled run's span, the first of its trace.
pub(super) fn exported_schedule_span(
    name: &str,
    fire: Option<chrono::DateTime<chrono::Utc>>,
    instance: &str,
    trace: TraceContext,
) -> Option<ExportedSpan> {
    exported(trace, None, None, instance, || What::Schedule {
        name: name.to_owned(),
        fire_ms: fire.map(|f| f.timestamp_millis()),
    })
}

impl ExportedSpan {
    /// Hands the span to the exporter. Without the `otlp` feature none is
    /// ever made, so there is nothing to hand.
    pub(super) fn end(self, error: Option<&RpcError>) {
        #[cfg(feature = "otlp")]
        {
            let done = crate::otlp::Done {
                trace: self.trace,
                parent: self.parent,
                tracestate: self.tracestate.as_deref(),
                instance: &self.instance,
                start: self.start,
                error: error.map(|e| (e.code, e.message.as_str())),
            };
            match self.what {
                What::Rpc {
                    service,
                    method,
                    request_id,
                    transaction,
                } => crate::otlp::record_rpc(&done, service, method, request_id, transaction),
                What::Event { topic, group } => crate::otlp::record_event(&done, topic, group),
                What::Schedule { name, fire_ms } => {
                    crate::otlp::record_schedule(&done, name, fire_ms);
                }
                What::Job {
                    queue,
                    id,
                    attempt,
                    transaction,
                } => crate::otlp::record_job(&done, queue, id, attempt, transaction),
            }
        }
        #[cfg(not(feature = "otlp"))]
        let _ = (self, error);
    }
}
