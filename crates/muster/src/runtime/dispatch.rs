//! Turns envelopes into handler calls and handler results into replies.
//! (One file past 600 lines: requests, events and jobs share the decoding,
//! the statistics and the trace context here; how a handler runs is in
//! `handler_run.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::Instrument;

use super::handler_run::{guarded, within_deadline};
use super::span_export::{exported_event_span, exported_job_span, exported_span};
use crate::RpcError;
use crate::ctx::{CallScope, Ctx};
use crate::extract::Invocation;
use crate::handler::ErasedHandler;
use crate::service::Service;
use crate::stats::{MethodStats, StatsReport};
use crate::transport::{BoxFuture, Dispatch, EventSink};
use crate::wire::{ContentType, Envelope, Header, Kind, jsonrpc};
use muster_core::queue::{Job, JobSink, Outcome};
use muster_core::registry::{InstanceInfo, builtin};
use muster_core::topic::Pattern;

struct Entry {
    handler: Arc<dyn ErasedHandler>,
    stats: Arc<MethodStats>,
}

struct EventEntry {
    pattern: Pattern,
    /// The durable group it belongs to; `None` for a plain subscription.
    group: Option<String>,
    handler: Arc<dyn ErasedHandler>,
    stats: Arc<MethodStats>,
}

pub(super) struct ServiceDispatch {
    service: String,
    /// Looked up by name on every call: foldhash, not SipHash (the set is
    /// fixed when the service starts; callers only look up).
    methods: foldhash::HashMap<String, Entry>,
    events: Vec<EventEntry>,
    /// Scheduled jobs: (`schedule:<expression>`, stats), in job order.
    jobs: Vec<(String, Arc<MethodStats>)>,
    /// Consumed queues: (`queue:<name>`, stats), in consumer order.
    queues: Vec<(String, Arc<MethodStats>)>,
    ctx: Ctx,
    info: InstanceInfo,
    config_shown: Value,
    started: Instant,
    /// The service's layers around its methods, if it has any.
    stack: Option<Arc<crate::layer::Stack>>,
    /// The requests running, for the cancel notices of their callers.
    pub(super) in_flight: Arc<super::in_flight::InFlight>,
}

impl ServiceDispatch {
    pub(super) fn new(
        service: &Service,
        ctx: Ctx,
        info: InstanceInfo,
        config_shown: Value,
        started: Instant,
    ) -> Self {
        Self {
            service: service.name.clone(),
            methods: service
                .methods
                .iter()
                .map(|m| {
                    (
                        m.name.clone(),
                        Entry {
                            handler: m.handler.clone(),
                            stats: Arc::default(),
                        },
                    )
                })
                .collect(),
            events: service
                .subscriptions
                .iter()
                .filter_map(|s| {
                    Some(EventEntry {
                        pattern: Pattern::parse(&s.pattern).ok()?,
                        group: s.durable.as_ref().map(|(g, _)| g.clone()),
                        handler: s.handler.clone(),
                        stats: Arc::default(),
                    })
                })
                .collect(),
            jobs: super::scheduler::job_names(&service.jobs)
                .into_iter()
                .map(|n| (n, Arc::default()))
                .collect(),
            queues: service
                .consumers
                .iter()
                .map(|c| (format!("queue:{}", c.queue), Arc::default()))
                .collect(),
            ctx,
            info,
            config_shown,
            started,
            stack: crate::layer::Stack::new(&service.layers).map(Arc::new),
            in_flight: Arc::default(),
        }
    }

    /// The job sink of each consumer, in consumer order.
    pub(super) fn queue_sinks(&self, service: &Service) -> Vec<Arc<QueueDispatch>> {
        service
            .consumers
            .iter()
            .zip(&self.queues)
            .map(|(c, (_, stats))| {
                Arc::new(QueueDispatch {
                    queue: c.queue.clone(),
                    handler: c.handler.clone(),
                    stats: stats.clone(),
                    ctx: self.ctx.clone(),
                    max_attempts: c.max_attempts,
                })
            })
            .collect()
    }

    /// The name and stats of each scheduled job, in job order.
    pub(super) fn job_stats(&self) -> Vec<(String, Arc<MethodStats>)> {
        self.jobs.clone()
    }

    fn stats_report(&self) -> StatsReport {
        let mut methods: std::collections::BTreeMap<_, _> = self
            .methods
            .iter()
            .map(|(k, e)| (k.clone(), e.stats.report()))
            .collect();
        for e in &self.events {
            methods.insert(format!("event:{}", e.pattern.as_str()), e.stats.report());
        }
        for (name, stats) in self.jobs.iter().chain(&self.queues) {
            methods.insert(name.clone(), stats.report());
        }
        StatsReport {
            service: self.service.clone(),
            instance: self.info.instance.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            methods,
        }
    }

    fn builtin(&self, method: &str) -> Option<Result<Box<RawValue>, RpcError>> {
        let value = match method {
            builtin::PING => serde_json::to_value("pong"),
            builtin::STATS => serde_json::to_value(self.stats_report()),
            builtin::INFO => {
                let mut v = serde_json::to_value(&self.info).unwrap_or_default();
                if let Value::Object(m) = &mut v {
                    m.insert("config".into(), self.config_shown.clone());
                    m.insert(
                        "uptime_secs".into(),
                        self.started.elapsed().as_secs().into(),
                    );
                }
                Ok(v)
            }
            _ => return None,
        };
        Some(
            value
                .and_then(|v| serde_json::value::to_raw_value(&v))
                .map_err(RpcError::internal),
        )
    }
}

fn reply(
    mut header: Box<Header>,
    ct: ContentType,
    id: &Option<Value>,
    outcome: Result<Box<RawValue>, RpcError>,
) -> Envelope {
    header.content_type = ct.header_value();
    let body = match outcome {
        Ok(raw) => {
            let encoded = match ct {
                ContentType::Json => jsonrpc::encode_raw_result(id, &raw),
                // RawValue only serializes through serde_json: transcode.
                ContentType::MsgPack => serde_json::from_str::<Value>(raw.get())
                    .map_err(RpcError::internal)
                    .and_then(|v| jsonrpc::encode_result(ct, id, &v)),
            };
            encoded.unwrap_or_else(|e| jsonrpc::encode_error(ct, id, &e))
        }
        Err(e) => jsonrpc::encode_error(ct, id, &e),
    };
    Envelope {
        header,
        body: body.into(),
    }
}

impl Dispatch for ServiceDispatch {
    fn dispatch(&self, request: Envelope) -> BoxFuture<'static, Option<Envelope>> {
        let Envelope { mut header, body } = request;
        // Boxed from the start: it travels in the reply's future and then
        // the reply envelope, which boxes its header anyway.
        let mut reply_header = Box::new(Header::reply_to(&header));
        reply_header.instance = Some(self.info.instance.clone());
        let ct = match ContentType::from_header(header.content_type.as_deref()) {
            Ok(ct) => ct,
            Err(e) => {
                let r = reply(
                    reply_header,
                    ContentType::Json,
                    &None,
                    Err(RpcError::invalid_request(e)),
                );
                return Box::pin(std::future::ready(Some(r)));
            }
        };
        let decoded = match jsonrpc::decode_request(ct, &body) {
            Ok(d) => d,
            Err(e) => {
                return Box::pin(std::future::ready(Some(reply(
                    reply_header,
                    ct,
                    &None,
                    Err(e),
                ))));
            }
        };
        // A notification runs like a request, and its answer (an error
        // included, as JSON-RPC 2.0 says) is not sent.
        let notification = decoded.is_notification();
        let answer = move |r: Envelope| (!notification).then_some(r);
        let method: &str = header.method.as_deref().unwrap_or(&decoded.method);
        if method == crate::state::SNAPSHOT_METHOD {
            let name = decoded
                .params
                .as_deref()
                .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            let snapshot = self.ctx.states().owned(&name).and_then(|h| h.snapshot());
            let service = self.service.clone();
            let id = decoded.id;
            return Box::pin(async move {
                let outcome = match snapshot {
                    Some(f) => f.await.and_then(|v| {
                        serde_json::value::to_raw_value(&v).map_err(RpcError::internal)
                    }),
                    None => Err(RpcError::method_not_found(format!(
                        "{service}.{}: no state {name:?}",
                        crate::state::SNAPSHOT_METHOD
                    ))),
                };
                answer(reply(reply_header, ct, &id, outcome))
            });
        }
        if let Some(outcome) = self.builtin(method) {
            return Box::pin(std::future::ready(answer(reply(
                reply_header,
                ct,
                &decoded.id,
                outcome,
            ))));
        }
        let Some(entry) = self.methods.get(method) else {
            let e = RpcError::method_not_found(format!("{}.{method}", self.service));
            return Box::pin(std::future::ready(answer(reply(
                reply_header,
                ct,
                &decoded.id,
                Err(e),
            ))));
        };
        // The handler's span: a child of the caller's, or the first of a
        // new trace when the request names none (or a malformed one).
        let caller = header
            .traceparent
            .as_deref()
            .and_then(crate::wire::TraceContext::parse);
        let trace = crate::sampling::span_for(caller);
        let span = tracing::info_span!(
            "rpc",
            method = %format_args!("{}.{method}", self.service),
            request_id = %header.id,
            transaction = header.transaction.as_deref().unwrap_or(""),
            trace_id = %trace.trace_id_text(),
        );
        // A deadline past what the clock can hold is no deadline.
        let scope_deadline = header
            .deadline_ms
            .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        let scope = CallScope {
            request_id: Some(header.id.clone()),
            transaction: header.transaction.clone(),
            deadline: scope_deadline,
            trace: Some(trace),
            trace_parent: caller.map(|c| c.span_id),
            tracestate: header.tracestate.clone(),
        };
        let export = exported_span(
            &self.service,
            method,
            &header,
            &self.info.instance,
            trace,
            caller,
        );
        // A notification has no caller waiting, so nothing to cancel. (The
        // key is the instance's to keep: the handler's header lacks it.)
        let caller = match (header.caller.take(), notification) {
            (Some(key), false) => Some((key, self.in_flight.clone())),
            _ => None,
        };
        let mut inv = Invocation {
            header,
            payload: decoded.params,
            ctx: self.ctx.scoped(scope),
            route: None,
        };
        let deadline = scope_deadline;
        let stats = entry.stats.clone();
        stats.begin();
        let started = Instant::now();
        let fut = match &self.stack {
            // Through the service's layers (`layer.rs`) to the handler.
            Some(stack) => {
                inv.route = Some(entry.handler.clone());
                let stack = stack.clone();
                Box::pin(async move { stack.call(inv).await })
            }
            None => span.in_scope(|| entry.handler.call(inv)),
        };
        let id = decoded.id;
        Box::pin(
            async move {
                let outcome = within_deadline(fut, deadline, caller, &stats).await;
                if let Err(e) = &outcome {
                    tracing::debug!(code = e.code, error = %e.message, "request failed");
                }
                stats.end(
                    started.elapsed(),
                    outcome.as_ref().err().map(|e| e.message.as_str()),
                );
                if let Some(export) = export {
                    export.end(outcome.as_ref().err());
                }
                answer(reply(reply_header, ct, &id, outcome))
            }
            .instrument(span),
        )
    }
}

impl EventSink for ServiceDispatch {
    fn missed(&self, topic: &str, count: u64) {
        self.missed_by(None, topic, count);
    }

    fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()> {
        self.deliver_to(None, event)
    }
}

/// The events of one durable group, for the handlers of that group only
/// (an event a plain subscription also matches reaches it there).
pub(super) struct GroupSink {
    pub(super) dispatch: Arc<ServiceDispatch>,
    pub(super) group: String,
}

impl EventSink for GroupSink {
    fn missed(&self, topic: &str, count: u64) {
        self.dispatch.missed_by(Some(&self.group), topic, count);
    }

    fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()> {
        self.dispatch.deliver_to(Some(&self.group), event)
    }
}

impl ServiceDispatch {
    fn missed_by(&self, group: Option<&str>, topic: &str, count: u64) {
        for entry in self
            .events
            .iter()
            .filter(|en| en.group.as_deref() == group && en.pattern.matches(topic))
        {
            entry.stats.missed(count);
        }
    }

    /// Runs the handlers of `group` (`None`: the plain subscriptions)
    /// whose pattern matches the event, one after the other.
    fn deliver_to(&self, group: Option<&str>, event: Envelope) -> BoxFuture<'static, ()> {
        let topic = event.header.topic.clone().unwrap_or_default();
        let mine = |en: &&EventEntry| en.group.as_deref() == group && en.pattern.matches(&topic);
        let payload = match decode_payload(&event) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "event payload is not valid; dropped");
                for entry in self.events.iter().filter(mine) {
                    entry.stats.begin();
                    entry.stats.end(Duration::ZERO, Some(&e));
                }
                return Box::pin(std::future::ready(()));
            }
        };
        // An event joins the trace of the handler that published it; one
        // published outside any trace is not traced (a call its handler
        // makes starts a trace at the callee).
        let caller = event
            .header
            .traceparent
            .as_deref()
            .and_then(crate::wire::TraceContext::parse);
        let trace = caller.map(|c| crate::sampling::span_for(Some(c)));
        let mut calls = Vec::new();
        for entry in self.events.iter().filter(mine) {
            let scope = CallScope {
                request_id: None,
                transaction: event.header.transaction.clone(),
                trace,
                trace_parent: caller.map(|c| c.span_id),
                ..CallScope::default()
            };
            let inv = Invocation {
                header: event.header.clone(),
                payload: Some(payload.clone()),
                ctx: self.ctx.scoped(scope),
                route: None,
            };
            entry.stats.begin();
            calls.push((entry.handler.call(inv), entry.stats.clone()));
        }
        let span = tracing::info_span!(
            "event",
            topic = %topic,
            transaction = event.header.transaction.as_deref().unwrap_or(""),
            trace_id = tracing::field::Empty,
        );
        if let Some(t) = &trace {
            span.record("trace_id", tracing::field::display(t.trace_id_text()));
        }
        let export =
            trace.and_then(|t| exported_event_span(&topic, group, &self.info.instance, t, caller));
        Box::pin(
            async move {
                let mut failed = None;
                for (fut, stats) in calls {
                    let started = Instant::now();
                    let outcome = guarded(fut).await;
                    if let Err(e) = &outcome {
                        tracing::warn!(code = e.code, error = %e.message, "event handler failed");
                    }
                    stats.end(
                        started.elapsed(),
                        outcome.as_ref().err().map(|e| e.message.as_str()),
                    );
                    if let Err(e) = outcome {
                        failed.get_or_insert(e);
                    }
                }
                if let Some(export) = export {
                    export.end(failed.as_ref());
                }
            }
            .instrument(span),
        )
    }
}

/// Runs a consumer's handler on each job and turns its result into an
/// [`Outcome`]: the retry and dead-letter rules live here, the same on every
/// transport.
pub(super) struct QueueDispatch {
    queue: String,
    handler: Arc<dyn ErasedHandler>,
    stats: Arc<MethodStats>,
    ctx: Ctx,
    max_attempts: u32,
}

impl JobSink for QueueDispatch {
    fn handle(&self, job: Job) -> BoxFuture<'static, Outcome> {
        // A job joins the trace of the handler that enqueued it, as its
        // child; one enqueued outside any trace is not traced, like an
        // event.
        let caller = job
            .traceparent
            .as_deref()
            .and_then(crate::wire::TraceContext::parse);
        let trace = caller.map(|c| crate::sampling::span_for(Some(c)));
        let span = tracing::info_span!(
            "job",
            queue = %self.queue,
            job = %job.id,
            attempt = job.attempt,
            transaction = job.transaction.as_deref().unwrap_or(""),
            trace_id = tracing::field::Empty,
        );
        if let Some(t) = &trace {
            span.record("trace_id", tracing::field::display(t.trace_id_text()));
        }
        self.stats.begin();
        // Past its attempts already: its consumers died holding it (a
        // crash counts as an attempt, `docs/guarantees.md`). It is not run
        // again, so a job that kills its consumer costs at most
        // `max_attempts` crashes.
        if job.attempt > self.max_attempts {
            let reason = format!(
                "{}; gave up after {} attempts",
                job.reason.as_deref().unwrap_or("delivered too often"),
                job.attempt - 1
            );
            span.in_scope(|| tracing::warn!(%reason, "job dead-lettered"));
            self.stats.end(Duration::ZERO, Some(&reason));
            return Box::pin(std::future::ready(Outcome::Dead { reason }));
        }
        let payload = std::str::from_utf8(&job.body)
            .map_err(|e| e.to_string())
            .and_then(|t| RawValue::from_string(t.to_owned()).map_err(|e| e.to_string()));
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("cannot decode job body: {e}");
                span.in_scope(|| tracing::warn!(%reason, "job dead-lettered"));
                self.stats.end(Duration::ZERO, Some(&reason));
                return Box::pin(std::future::ready(Outcome::Dead { reason }));
            }
        };
        let mut header = Header::new(Kind::Event);
        header.id.clone_from(&job.id);
        header.transaction.clone_from(&job.transaction);
        let inv = Invocation {
            header: Box::new(header),
            payload: Some(payload),
            route: None,
            ctx: self.ctx.scoped(CallScope {
                request_id: Some(job.id.clone()),
                transaction: job.transaction.clone(),
                trace,
                trace_parent: caller.map(|c| c.span_id),
                ..CallScope::default()
            }),
        };
        let export = trace
            .and_then(|t| exported_job_span(&self.queue, &job, self.ctx.instance(), t, caller));
        let fut = span.in_scope(|| self.handler.call(inv));
        let stats = self.stats.clone();
        let max_attempts = self.max_attempts;
        Box::pin(
            async move {
                let started = Instant::now();
                let result = guarded(fut).await;
                stats.end(
                    started.elapsed(),
                    result.as_ref().err().map(|e| e.message.as_str()),
                );
                if let Some(export) = export {
                    export.end(result.as_ref().err());
                }
                let outcome = job_outcome(result.map(|_| ()), job.attempt, max_attempts);
                match &outcome {
                    Outcome::Ack => {}
                    Outcome::Retry { reason, after } => {
                        tracing::info!(%reason, retry_in = ?after, "job failed; will retry");
                    }
                    Outcome::Dead { reason } => tracing::warn!(%reason, "job dead-lettered"),
                }
                outcome
            }
            .instrument(span),
        )
    }
}

/// The retry rules: decode and permanent errors are dead at once, other
/// errors retry with backoff until `max_attempts`.
fn job_outcome(result: Result<(), RpcError>, attempt: u32, max_attempts: u32) -> Outcome {
    use muster_core::error::code;
    let Err(e) = result else {
        return Outcome::Ack;
    };
    if matches!(
        e.code,
        code::INVALID_PARAMS | code::PARSE_ERROR | code::PERMANENT
    ) {
        return Outcome::Dead {
            reason: e.to_string(),
        };
    }
    if attempt >= max_attempts {
        return Outcome::Dead {
            reason: format!("{e}; gave up after {attempt} attempts"),
        };
    }
    Outcome::Retry {
        after: muster_core::queue::retry_delay(attempt),
        reason: e.to_string(),
    }
}

fn decode_payload(event: &Envelope) -> Result<Box<RawValue>, String> {
    match ContentType::from_header(event.header.content_type.as_deref())
        .map_err(|e| e.to_string())?
    {
        ContentType::Json => {
            let text = std::str::from_utf8(&event.body).map_err(|e| e.to_string())?;
            RawValue::from_string(text.to_owned()).map_err(|e| e.to_string())
        }
        ContentType::MsgPack => {
            let v: Value = rmp_serde::from_slice(&event.body).map_err(|e| e.to_string())?;
            serde_json::value::to_raw_value(&v).map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules() {
        assert_eq!(job_outcome(Ok(()), 1, 5), Outcome::Ack);
        let flaky = || Err(RpcError::internal("db down"));
        assert!(matches!(job_outcome(flaky(), 1, 5), Outcome::Retry { .. }));
        assert!(
            matches!(job_outcome(flaky(), 5, 5), Outcome::Dead { reason } if reason.contains("after 5 attempts"))
        );
        for e in [
            RpcError::permanent("no such image"),
            RpcError::invalid_params("image", "missing"),
        ] {
            assert!(matches!(job_outcome(Err(e), 1, 5), Outcome::Dead { .. }));
        }
    }
}
