//! An in-memory transport: the whole protocol (envelopes, JSON-RPC
//! bodies, topics) with channels instead of sockets. For tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_core::durable::{DurableGroup, EventJobs, Keeper};
use muster_core::queue::consumer::{self, JobSource};
use muster_core::queue::{
    ConsumeOptions, Job, JobSink, Outcome, QueueBook, QueueCommand, QueueReply,
};
use muster_core::registry::InstanceInfo;
use muster_core::topic::{Pattern, is_valid_topic};
use muster_core::transport::{
    BoxFuture, Dispatch, EventSink, Registration, Served, Subscribed, Transport,
};
use muster_core::wire::Envelope;
use muster_core::{Error, ErrorKind, RpcError};
use tokio::sync::mpsc;

struct Instance {
    info: InstanceInfo,
    dispatch: Arc<dyn Dispatch>,
    outstanding: Arc<AtomicUsize>,
}

struct Sub {
    id: usize,
    patterns: Vec<Pattern>,
    tx: mpsc::Sender<Envelope>,
}

#[derive(Default)]
struct State {
    instances: Vec<Instance>,
    subs: Vec<Sub>,
    next_sub: usize,
    /// key -> (holder, until)
    claims: std::collections::HashMap<String, (String, std::time::Instant)>,
    queues: QueueBook,
    /// Durable groups: their events wait in `queues`.
    durable: Keeper,
}

/// The in-memory bus. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    state: Arc<Mutex<State>>,
    /// Woken when a job is enqueued.
    jobs_ready: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryTransport")
    }
}

impl MemoryTransport {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscriptions that `topic` reaches now.
    #[cfg(test)]
    pub(crate) fn subscribers(&self, topic: &str) -> usize {
        self.lock()
            .subs
            .iter()
            .filter(|s| s.patterns.iter().any(|p| p.matches(topic)))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct MemServed {
    bus: MemoryTransport,
    instance: String,
    outstanding: Arc<AtomicUsize>,
}

impl Served for MemServed {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.bus
                .lock()
                .instances
                .retain(|i| i.info.instance != self.instance);
            let deadline = tokio::time::Instant::now() + grace;
            while self.outstanding.load(Ordering::Acquire) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    }

    fn endpoint(&self) -> String {
        format!("memory://{}", self.instance)
    }
}

#[derive(Debug)]
struct MemSubscribed {
    bus: MemoryTransport,
    id: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Subscribed for MemSubscribed {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.bus.lock().subs.retain(|s| s.id != self.id);
            self.task.abort();
            let _ = self.task.await;
        })
    }
}

impl Transport for MemoryTransport {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn serve(
        &self,
        registration: Registration,
        dispatch: Arc<dyn Dispatch>,
    ) -> BoxFuture<'_, Result<Box<dyn Served>, Error>> {
        Box::pin(async move {
            let mut info = registration.info;
            info.endpoint = format!("memory://{}", info.instance);
            let outstanding = Arc::new(AtomicUsize::new(0));
            let instance = info.instance.clone();
            self.lock().instances.push(Instance {
                info,
                dispatch,
                outstanding: outstanding.clone(),
            });
            Ok(Box::new(MemServed {
                bus: self.clone(),
                instance,
                outstanding,
            }) as Box<dyn Served>)
        })
    }

    fn request(
        &self,
        request: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Envelope, RpcError>> {
        Box::pin(async move {
            let service = request.header.service.clone().unwrap_or_default();
            let method = request.header.method.clone().unwrap_or_default();
            let (dispatch, outstanding) = {
                let st = self.lock();
                let candidates = muster_core::registry::candidates(
                    &st.instances,
                    |i| &i.info,
                    &service,
                    &method,
                    request.header.instance.as_deref(),
                )?;
                let best = candidates
                    .iter()
                    .min_by_key(|i| i.outstanding.load(Ordering::Relaxed))
                    .ok_or_else(|| RpcError::unavailable(&service))?;
                (best.dispatch.clone(), best.outstanding.clone())
            };
            let mut req = request;
            req.header.deadline_ms = Some(timeout.as_millis().try_into().unwrap_or(u64::MAX));
            outstanding.fetch_add(1, Ordering::AcqRel);
            let r = tokio::time::timeout(timeout, dispatch.dispatch(req)).await;
            outstanding.fetch_sub(1, Ordering::AcqRel);
            r.ok().flatten().ok_or_else(|| {
                RpcError::timeout(format!(
                    "no reply from {service}.{method} within {timeout:?}"
                ))
            })
        })
    }

    fn publish(&self, event: Envelope) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let topic = event.header.topic.clone().unwrap_or_default();
            if !is_valid_topic(&topic) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("cannot publish on {topic:?}"),
                ));
            }
            let targets: Vec<mpsc::Sender<Envelope>> = {
                let mut st = self.lock();
                let st = &mut *st;
                if st.durable.wants(&topic) {
                    st.durable.keep(&mut st.queues, &event);
                    self.jobs_ready.notify_waiters();
                }
                st.subs
                    .iter()
                    .filter(|s| s.patterns.iter().any(|p| p.matches(&topic)))
                    .map(|s| s.tx.clone())
                    .collect()
            };
            for tx in targets {
                let _ = tx.send(event.clone()).await;
            }
            Ok(())
        })
    }

    fn subscribe(
        &self,
        patterns: &[String],
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let patterns = patterns.to_vec();
        Box::pin(async move {
            let patterns = patterns
                .iter()
                .map(|p| {
                    Pattern::parse(p).map_err(|e| Error::new(ErrorKind::Config, e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (tx, mut rx) = mpsc::channel::<Envelope>(1024);
            let id = {
                let mut st = self.lock();
                st.next_sub += 1;
                let id = st.next_sub;
                st.subs.push(Sub { id, patterns, tx });
                id
            };
            let task = tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    sink.deliver(e).await;
                }
            });
            Ok(Box::new(MemSubscribed {
                bus: self.clone(),
                id,
                task,
            }) as Box<dyn Subscribed>)
        })
    }

    fn subscribe_durable(
        &self,
        group: &DurableGroup,
        options: ConsumeOptions,
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let declared = self.lock().durable.declare(group.clone());
        let queue = group.queue();
        Box::pin(async move {
            declared?;
            self.consume(&queue, options, Arc::new(EventJobs::new(sink)))
                .await
        })
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, Error>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .instances
                .iter()
                .map(|i| i.info.clone())
                .collect())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn claim(&self, key: &str, holder: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, Error>> {
        let now = std::time::Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.claims.retain(|_, (_, until)| *until > now);
        let granted = match state.claims.get(key) {
            Some((h, _)) => h == holder,
            None => {
                state
                    .claims
                    .insert(key.to_owned(), (holder.to_owned(), now + ttl));
                true
            }
        };
        Box::pin(async move { Ok(granted) })
    }

    fn enqueue(&self, queue: &str, job: Job) -> BoxFuture<'_, Result<(), Error>> {
        let pushed = self.lock().queues.push(queue, job);
        self.jobs_ready.notify_waiters();
        Box::pin(async move {
            pushed
                .map(|_| ())
                .map_err(|e| Error::new(ErrorKind::Unavailable, e.to_string()))
        })
    }

    fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
        sink: Arc<dyn JobSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let source = Arc::new(MemSource {
            bus: self.clone(),
            queue: queue.to_owned(),
            holder: format!("{}-{}", options.holder, muster_core::id::short_id()),
        });
        Box::pin(async move {
            Ok(Box::new(consumer::spawn(source, sink, &options)) as Box<dyn Subscribed>)
        })
    }

    fn queue_command(
        &self,
        queue: &str,
        command: QueueCommand,
    ) -> BoxFuture<'_, Result<QueueReply, Error>> {
        let reply = self.lock().queues.command(queue, &command);
        if command == QueueCommand::RequeueDead {
            self.jobs_ready.notify_waiters();
        }
        Box::pin(async move { Ok(reply) })
    }
}

/// One consumer of an in-memory queue.
struct MemSource {
    bus: MemoryTransport,
    queue: String,
    holder: String,
}

impl JobSource for MemSource {
    fn take(&self, max: usize) -> BoxFuture<'_, Result<Vec<(u64, Job)>, Error>> {
        Box::pin(async move {
            let ready = self.bus.jobs_ready.notified();
            let jobs = self.bus.lock().queues.take(&self.queue, &self.holder, max);
            if !jobs.is_empty() {
                return Ok(jobs);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ready).await;
            Ok(self.bus.lock().queues.take(&self.queue, &self.holder, max))
        })
    }

    fn settle<'a>(
        &'a self,
        tag: u64,
        _job: &'a Job,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let retried = matches!(outcome, Outcome::Retry { .. });
        self.bus.lock().queues.settle(&self.queue, tag, outcome);
        if retried {
            self.bus.jobs_ready.notify_waiters();
        }
        Box::pin(async { Ok(()) })
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        if self.bus.lock().queues.release(&self.holder) > 0 {
            self.bus.jobs_ready.notify_waiters();
        }
        Box::pin(async {})
    }
}
