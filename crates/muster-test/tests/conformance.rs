//! One conformance suite, run on every bus: the embedded ZeroMQ bus,
//! RabbitMQ (`MUSTER_TEST_AMQP`), Redis (`MUSTER_TEST_REDIS`) and NATS
//! (`MUSTER_TEST_NATS`). Each test is written once against the transport
//! trait and the service framework; the `zmq`, `amqp`, `redis` and `nats`
//! modules at the bottom stamp it out per bus.
//! What it proves is the table in `docs/guarantees.md`.
//!
//! One file past 600 lines on purpose: the suite is one list of tests
//! over one harness (`Bus`, the `conformance!` macro); a test per pattern
//! added here runs on every bus, which a split would make easy to miss.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster::prelude::*;
use muster::queue::{Job, QueueCommand, QueueReply};
use muster::transport::SharedTransport;
use muster_test::{broker_url, eventually};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Zmq,
    Amqp,
    Redis,
    Nats,
}

/// One bus for one test: a private namespace on a shared broker (a key
/// prefix on Redis, an exchange on RabbitMQ), a fresh bus on ZeroMQ.
struct Bus {
    url: String,
    /// Suffix that keeps names of concurrent tests apart.
    ns: String,
    _zmq: Option<muster_zmq::Bus>,
}

impl Bus {
    async fn open(kind: Kind, test: &str) -> Option<Self> {
        let ns = format!("t{:x}", muster::id::random_u64() & 0xff_ffff);
        let (url, zmq) = match kind {
            Kind::Zmq => {
                let url = muster_test::free_bus_url();
                let bus = muster_test::start_bus(&url).await;
                (url, Some(bus))
            }
            Kind::Redis => {
                let base = broker_url("MUSTER_TEST_REDIS", test)?;
                (with_query(&base, &format!("prefix={ns}")), None)
            }
            Kind::Amqp => {
                let base = broker_url("MUSTER_TEST_AMQP", test)?;
                (with_query(&base, &format!("exchange={ns}")), None)
            }
            Kind::Nats => {
                let base = broker_url("MUSTER_TEST_NATS", test)?;
                (with_query(&base, &format!("prefix={ns}")), None)
            }
        };
        Some(Self { url, ns, _zmq: zmq })
    }

    /// A new connection, as a separate process would have.
    async fn connect(&self) -> SharedTransport {
        muster::bus::connect(&self.url, None)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    async fn client(&self) -> Client {
        Client::new(self.connect().await)
    }

    fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.ns)
    }
}

fn with_query(url: &str, kv: &str) -> String {
    if url.contains('?') {
        format!("{url}&{kv}")
    } else {
        format!("{url}?{kv}")
    }
}

#[derive(Deserialize, Serialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

async fn add(Args(x): Args<Add>) -> Result<i64, RpcError> {
    Ok(x.a + x.b)
}

async fn rpc_call_and_errors(bus: &Bus) {
    let svc = bus.name("calc");
    let h = Service::new(&svc)
        .rpc("add", add)
        .start(bus.connect().await)
        .await
        .unwrap();
    let client = bus.client().await;
    muster_test::wait_registered(&client, &svc, 1).await;
    let sum: i64 = client
        .call(&format!("{svc}.add"), &serde_json::json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(sum, 5);
    let by_position: i64 = client
        .call(&format!("{svc}.add"), &serde_json::json!([4, 5]))
        .await
        .unwrap();
    assert_eq!(by_position, 9, "params as an array fill fields in order");
    let wrong = client
        .call::<_, i64>(
            &format!("{svc}.add"),
            &serde_json::json!({"a": "x", "b": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code, -32602, "{wrong}");
    assert_eq!(wrong.data.unwrap()["path"], "a");
    let unknown = client
        .call::<_, i64>(&format!("{svc}.nope"), &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(unknown.code, -32601, "{unknown}");
    let nobody = client
        .call::<_, i64>(&bus.name("nobody.x"), &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(nobody.code, -32601, "{nobody}");
    h.stop().await;
}

async fn rpc_balanced_over_instances(bus: &Bus) {
    let svc = bus.name("who");
    let mut handles = Vec::new();
    for _ in 0..2 {
        handles.push(
            Service::new(&svc)
                .rpc("who", |ctx: Ctx| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, RpcError>(ctx.instance().to_owned())
                })
                .start(bus.connect().await)
                .await
                .unwrap(),
        );
    }
    let client = bus.client().await;
    muster_test::wait_registered(&client, &svc, 2).await;
    let calls = (0..40).map(|_| {
        let client = client.clone();
        let target = format!("{svc}.who");
        async move {
            client
                .call::<_, String>(&target, &serde_json::json!({}))
                .await
                .unwrap()
        }
    });
    let served: HashSet<String> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect();
    assert_eq!(served.len(), 2, "both instances took calls: {served:?}");
    for h in handles {
        h.stop().await;
    }
}

async fn rpc_timeout(bus: &Bus) {
    let svc = bus.name("slow");
    let h = Service::new(&svc)
        .rpc("nap", || async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, RpcError>(())
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let client = bus.client().await;
    muster_test::wait_registered(&client, &svc, 1).await;
    let e = client
        .call_with::<_, ()>(
            &format!("{svc}.nap"),
            &serde_json::json!({}),
            muster::CallOptions::default().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, -32000, "{e}");
    drop(h);
}

/// Records when it is dropped: the moment a handler holding it stopped.
struct DroppedAt(Arc<Mutex<Option<std::time::Instant>>>);

impl Drop for DroppedAt {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(std::time::Instant::now());
    }
}

/// What a handler saw of its trace: its own span, and its caller's.
type SeenTrace = Arc<Mutex<Vec<(muster::wire::TraceContext, Option<u64>)>>>;

/// A call carrying a `traceparent` joins that trace; the handler's nested
/// call carries it on, as the handler's child; a call without one starts
/// a trace that its nested call shares.
async fn rpc_carries_the_trace_context_to_nested_calls(bus: &Bus) {
    let (a, b) = (bus.name("traced"), bus.name("traced-inner"));
    let seen: SeenTrace = Arc::default();
    let seen_b = seen.clone();
    let hb = Service::new(&b)
        .rpc("inner", move |ctx: Ctx| {
            let seen = seen_b.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((ctx.trace().expect("a span"), ctx.trace_parent()));
                Ok::<_, RpcError>(())
            }
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let (seen_a, target) = (seen.clone(), format!("{b}.inner"));
    let ha = Service::new(&a)
        .rpc("outer", move |ctx: Ctx| {
            let (seen, target) = (seen_a.clone(), target.clone());
            async move {
                seen.lock()
                    .unwrap()
                    .push((ctx.trace().expect("a span"), ctx.trace_parent()));
                ctx.request::<_, ()>(&target, &serde_json::json!({})).await
            }
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let client = bus.client().await;
    muster_test::wait_registered(&client, &a, 1).await;
    muster_test::wait_registered(&client, &b, 1).await;

    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let () = client
        .call_with(
            &format!("{a}.outer"),
            &serde_json::json!({}),
            muster::CallOptions::default().traceparent(given),
        )
        .await
        .unwrap();
    let spans = std::mem::take(&mut *seen.lock().unwrap());
    let [(outer, outer_parent), (inner, inner_parent)] = spans[..] else {
        panic!("two handlers ran: {spans:?}");
    };
    assert_eq!(outer.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        outer_parent,
        Some(0x00f0_67aa_0ba9_02b7),
        "the caller's span"
    );
    assert_ne!(outer.span_id, 0x00f0_67aa_0ba9_02b7, "a span of its own");
    assert_eq!(inner.trace_id, outer.trace_id, "one trace");
    assert_eq!(
        inner_parent,
        Some(outer.span_id),
        "the nested call's parent"
    );
    assert_ne!(inner.span_id, outer.span_id);

    // No traceparent: the first handler starts a trace, shared below it.
    let () = client
        .call(&format!("{a}.outer"), &serde_json::json!({}))
        .await
        .unwrap();
    let spans = std::mem::take(&mut *seen.lock().unwrap());
    let [(outer, outer_parent), (inner, inner_parent)] = spans[..] else {
        panic!("two handlers ran: {spans:?}");
    };
    assert_eq!(outer_parent, None);
    assert_ne!(outer.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
    assert_eq!(inner.trace_id, outer.trace_id);
    assert_eq!(inner_parent, Some(outer.span_id));
    ha.stop().await;
    hb.stop().await;
}

/// An event published by a handler carries the handler's span: its
/// subscriber runs in the same trace, as that span's child. One published
/// outside any trace is not traced.
async fn events_carry_the_trace_context_of_their_publisher(bus: &Bus) {
    let topic = format!("{}.traced", bus.name("ev"));
    let heard: SeenTrace = Arc::default();
    let (kept, pattern) = (heard.clone(), topic.clone());
    let hl = Service::new(bus.name("trace-listener"))
        .subscribe(&pattern, move |ctx: Ctx| {
            let kept = kept.clone();
            async move {
                if let Some(t) = ctx.trace() {
                    kept.lock().unwrap().push((t, ctx.trace_parent()));
                }
                Ok::<_, RpcError>(())
            }
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let announcer = bus.name("announcer");
    let spoke: SeenTrace = Arc::default();
    let (said, t) = (spoke.clone(), topic.clone());
    let ha = Service::new(&announcer)
        .rpc("announce", move |ctx: Ctx| {
            let (said, topic) = (said.clone(), t.clone());
            async move {
                said.lock()
                    .unwrap()
                    .push((ctx.trace().expect("a span"), ctx.trace_parent()));
                ctx.publish(&topic, &1u32).await.map_err(RpcError::internal)
            }
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let client = bus.client().await;
    muster_test::wait_registered(&client, &announcer, 1).await;
    let target = format!("{announcer}.announce");
    // The ZeroMQ forwarder needs the subscription to travel: announce
    // until one is heard.
    eventually(Duration::from_secs(10), "an announcement heard", || async {
        let () = client.call(&target, &serde_json::json!({})).await.unwrap();
        (!heard.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let () = client
        .call_with(
            &target,
            &serde_json::json!({}),
            muster::CallOptions::default().traceparent(given),
        )
        .await
        .unwrap();
    let (publisher, _) = *spoke.lock().unwrap().last().unwrap();
    assert_eq!(publisher.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
    let (subscriber, parent) = eventually(Duration::from_secs(10), "the traced event", || async {
        heard
            .lock()
            .unwrap()
            .iter()
            .copied()
            .find(|(t, _)| t.trace_id == publisher.trace_id)
    })
    .await;
    assert_eq!(parent, Some(publisher.span_id), "the publisher's span");
    assert_ne!(subscriber.span_id, publisher.span_id);

    // Published outside any trace: its handler runs without one.
    let plain: Arc<Mutex<Vec<Option<muster::wire::TraceContext>>>> = Arc::default();
    let (kept, pattern) = (plain.clone(), format!("{topic}.plain"));
    let hp = Service::new(bus.name("plain-listener"))
        .subscribe(&pattern, move |ctx: Ctx| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(ctx.trace());
                Ok::<_, RpcError>(())
            }
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let seen = eventually(Duration::from_secs(10), "a plain event heard", || async {
        client.publish(&pattern, &1u32).await.unwrap();
        plain.lock().unwrap().first().copied()
    })
    .await;
    assert_eq!(seen, None, "an event from outside a trace has none");
    hl.stop().await;
    ha.stop().await;
    hp.stop().await;
}

/// A job enqueued by a handler carries the handler's span: its consumer
/// runs in the same trace, as that span's child, on every attempt. One
/// enqueued outside any trace is not traced.
async fn jobs_carry_the_trace_context_of_their_enqueuer(bus: &Bus) {
    let queue = bus.name("traced-work");
    // Per job body: the trace each attempt ran in, and its parent.
    type Ran = Vec<(u32, Option<muster::wire::TraceContext>, Option<u64>)>;
    let ran: Arc<Mutex<Ran>> = Arc::default();
    let kept = ran.clone();
    let hw = Service::new(bus.name("trace-worker"))
        .consume(&queue, move |ctx: Ctx, Args(n): Args<u32>| {
            let kept = kept.clone();
            async move {
                let first = {
                    let mut ran = kept.lock().unwrap();
                    ran.push((n, ctx.trace(), ctx.trace_parent()));
                    ran.iter().filter(|(m, ..)| *m == n).count() == 1
                };
                // Job 1 fails its first attempt: the retry keeps the trace.
                if n == 1 && first {
                    return Err(RpcError::internal("flaky once"));
                }
                Ok(())
            }
        })
        .max_attempts(3)
        .start(bus.connect().await)
        .await
        .unwrap();
    let submitter = bus.name("submitter");
    let spoke: SeenTrace = Arc::default();
    let (said, q) = (spoke.clone(), queue.clone());
    let hs = Service::new(&submitter)
        .rpc("submit", move |ctx: Ctx, Args(n): Args<u32>| {
            let (said, q) = (said.clone(), q.clone());
            async move {
                said.lock()
                    .unwrap()
                    .push((ctx.trace().expect("a span"), ctx.trace_parent()));
                ctx.enqueue(&q, &n).await.map_err(RpcError::internal)?;
                Ok::<_, RpcError>(())
            }
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let client = bus.client().await;
    muster_test::wait_registered(&client, &submitter, 1).await;

    let given = "00-5af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01";
    let () = client
        .call_with(
            &format!("{submitter}.submit"),
            &1u32,
            muster::CallOptions::default().traceparent(given),
        )
        .await
        .unwrap();
    client.enqueue(&queue, &2u32).await.unwrap();
    let (submitted, _) = *spoke.lock().unwrap().last().unwrap();
    assert_eq!(submitted.trace_id_hex(), "5af7651916cd43dd8448eb211c80319c");
    let runs = eventually(
        Duration::from_secs(20),
        "both attempts of job 1 and job 2",
        || async {
            let ran = ran.lock().unwrap();
            (ran.iter().filter(|(n, ..)| *n == 1).count() == 2 && ran.iter().any(|(n, ..)| *n == 2))
                .then(|| ran.clone())
        },
    )
    .await;
    for (n, trace, parent) in &runs {
        if *n == 1 {
            let trace = trace.expect("job 1 runs in its enqueuer's trace");
            assert_eq!(trace.trace_id, submitted.trace_id, "one trace");
            assert_eq!(*parent, Some(submitted.span_id), "the enqueuer's span");
            assert_ne!(trace.span_id, submitted.span_id, "a span of its own");
        } else {
            assert_eq!(*trace, None, "a job from outside a trace has none");
        }
    }
    hw.stop().await;
    hs.stop().await;
}

/// A caller that was just told a service does not exist can call it as
/// soon as its instance has started: the answer "no such service" is not
/// served from a copy of the registry older than the registration.
async fn a_service_is_callable_once_started(bus: &Bus) {
    let name = bus.name("late");
    let client = bus.client().await;
    let target = format!("{name}.ping");
    let early = client
        .call::<_, u32>(&target, &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        early.code,
        muster_core::error::code::METHOD_NOT_FOUND,
        "{early:?}"
    );
    let h = Service::new(&name)
        .rpc("ping", || async { Ok::<_, RpcError>(1u32) })
        .start(bus.connect().await)
        .await
        .unwrap();
    let answer: u32 = client.call(&target, &serde_json::json!({})).await.unwrap();
    assert_eq!(answer, 1);
    h.stop().await;
}

/// B, whose handler calls C, whose handler never answers: what the
/// cancellation tests watch. Each handler notes when it was dropped.
struct Nested {
    b: String,
    c: String,
    b_stopped: Arc<Mutex<Option<std::time::Instant>>>,
    c_stopped: Arc<Mutex<Option<std::time::Instant>>>,
    /// Calls C's handler took.
    c_started: Arc<std::sync::atomic::AtomicUsize>,
    handles: Vec<muster::ServiceHandle>,
}

impl Nested {
    /// B's nested call has `nested_timeout`, else what is left of B's
    /// own deadline.
    async fn start(bus: &Bus, nested_timeout: Option<Duration>) -> Self {
        let (b, c) = (bus.name("relay"), bus.name("sleeper"));
        let c_stopped: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let b_stopped: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let c_started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cs, started) = (c_stopped.clone(), c_started.clone());
        let hc = Service::new(&c)
            .rpc("slow", move || {
                let guard = DroppedAt(cs.clone());
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    let _guard = guard;
                    // Never answers: only a cancellation ends it.
                    std::future::pending::<Result<(), RpcError>>().await
                }
            })
            .start(bus.connect().await)
            .await
            .unwrap();
        let (bs, target) = (b_stopped.clone(), format!("{c}.slow"));
        let hb = Service::new(&b)
            .rpc("relay", move |ctx: Ctx| {
                let (guard, target) = (DroppedAt(bs.clone()), target.clone());
                async move {
                    let _guard = guard;
                    let mut options = muster::CallOptions::default();
                    options.timeout = nested_timeout;
                    ctx.request_with::<_, ()>(&target, &serde_json::json!({}), options)
                        .await
                }
            })
            .start(bus.connect().await)
            .await
            .unwrap();
        Self {
            b,
            c,
            b_stopped,
            c_stopped,
            c_started,
            handles: vec![hb, hc],
        }
    }

    /// When both handlers were dropped, once both were.
    async fn both_stopped(&self) -> (std::time::Instant, std::time::Instant) {
        eventually(Duration::from_secs(10), "both handlers stopped", || {
            let (b, c) = (
                *self.b_stopped.lock().unwrap(),
                *self.c_stopped.lock().unwrap(),
            );
            async move { b.zip(c) }
        })
        .await
    }

    /// Waits until B and C each count `n` cancellations.
    async fn cancelled(&self, client: &Client, n: u64) {
        for (service, method) in [(&self.b, "relay"), (&self.c, "slow")] {
            eventually(
                Duration::from_secs(10),
                &format!("{service}.{method} counts {n} cancellations"),
                || async {
                    let got = num_cancelled(client, service, method).await?;
                    (got == n).then_some(())
                },
            )
            .await;
        }
    }

    async fn stop(self) {
        for h in self.handles {
            h.stop().await;
        }
    }
}

/// The number of cancellations `service.method` counts, over its instances.
async fn num_cancelled(client: &Client, service: &str, method: &str) -> Option<u64> {
    Some(
        client
            .stats(Some(service))
            .await
            .ok()?
            .into_iter()
            .flatten()
            .map(|r| r.methods.get(method).map_or(0, |m| m.num_cancelled))
            .sum(),
    )
}

/// A handler's nested call that never answers: both stop at the first
/// caller's deadline (each instance drops its handler then), and both
/// count a cancellation.
async fn rpc_deadline_cancels_the_handler_and_its_nested_call(bus: &Bus) {
    let nested = Nested::start(bus, None).await;
    let client = bus.client().await;
    muster_test::wait_registered(&client, &nested.b, 1).await;
    muster_test::wait_registered(&client, &nested.c, 1).await;
    let sent = std::time::Instant::now();
    let e = client
        .call_with::<_, ()>(
            &format!("{}.relay", nested.b),
            &serde_json::json!({}),
            muster::CallOptions::default().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, -32000, "{e}");
    let deadline = sent + Duration::from_millis(200);
    // Both handlers stop soon after the deadline; nothing else ends them.
    let (b_at, c_at) = nested.both_stopped().await;
    eprintln!(
        "stopped after the deadline: relay {:?}, sleeper {:?}",
        b_at.saturating_duration_since(deadline),
        c_at.saturating_duration_since(deadline)
    );
    nested.cancelled(&client, 1).await;
    nested.stop().await;
}

/// A caller that gives its call up long before the deadline (its cancel
/// token fires, or its call's future is dropped) stops the handler and
/// the handler's nested call, which count the cancellations; nothing else
/// would end them for 30 s.
async fn rpc_cancelled_when_its_caller_gives_up(bus: &Bus) {
    let nested = Nested::start(bus, Some(Duration::from_secs(30))).await;
    let client = bus.client().await;
    muster_test::wait_registered(&client, &nested.b, 1).await;
    muster_test::wait_registered(&client, &nested.c, 1).await;
    let relay = format!("{}.relay", nested.b);
    for (round, how) in [(1u64, "token"), (2, "drop")] {
        *nested.b_stopped.lock().unwrap() = None;
        *nested.c_stopped.lock().unwrap() = None;
        let stop = tokio_util::sync::CancellationToken::new();
        let options = muster::CallOptions::default()
            .timeout(Duration::from_secs(30))
            .cancel_on(stop.clone());
        let (caller, target) = (client.clone(), relay.clone());
        let call = tokio::spawn(async move {
            caller
                .call_with::<_, ()>(&target, &serde_json::json!({}), options)
                .await
        });
        eventually(Duration::from_secs(10), "the nested call running", || {
            let n = nested.c_started.load(std::sync::atomic::Ordering::SeqCst);
            std::future::ready((n as u64 == round).then_some(()))
        })
        .await;
        let gave_up = std::time::Instant::now();
        if how == "token" {
            stop.cancel();
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(e.code, muster_core::error::code::TIMEOUT, "{e}");
        } else {
            call.abort();
        }
        let (b_at, c_at) = nested.both_stopped().await;
        eprintln!(
            "{how}: stopped after the caller gave up: relay {:?}, sleeper {:?}",
            b_at.saturating_duration_since(gave_up),
            c_at.saturating_duration_since(gave_up)
        );
        nested.cancelled(&client, round).await;
    }
    nested.stop().await;
}

async fn events_in_order_and_filtered(bus: &Bus) {
    let got: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seen = got.clone();
    let prefix = bus.name("ev");
    let h = Service::new(bus.name("listener"))
        .subscribe(
            &format!("{prefix}.a.*"),
            move |h: Header, Args(n): Args<u32>| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push((h.topic.clone().unwrap_or_default(), n));
                    Ok::<_, RpcError>(())
                }
            },
        )
        .start(bus.connect().await)
        .await
        .unwrap();
    let client = bus.client().await;
    // A subscription is live when start returns on brokers; the ZeroMQ
    // forwarder needs its subscription to travel: publish until one lands.
    eventually(Duration::from_secs(10), "first event delivered", || async {
        client
            .publish(&format!("{prefix}.a.warmup"), &0u32)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        (!got.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    got.lock().unwrap().clear();
    for n in 1..=50u32 {
        client.publish(&format!("{prefix}.b.x"), &n).await.unwrap();
        client.publish(&format!("{prefix}.a.x"), &n).await.unwrap();
    }
    let events = eventually(Duration::from_secs(10), "50 events", || async {
        let g = got.lock().unwrap().clone();
        (g.iter().filter(|(t, _)| t.ends_with(".a.x")).count() >= 50).then_some(g)
    })
    .await;
    let ns: Vec<u32> = events
        .iter()
        .filter(|(t, _)| t.ends_with(".a.x"))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        ns,
        (1..=50).collect::<Vec<_>>(),
        "in publish order, once each"
    );
    assert!(
        events
            .iter()
            .all(|(t, _)| t.starts_with(&format!("{prefix}.a."))),
        "only matching topics: {events:?}"
    );
    h.stop().await;
}

/// A `Client` subscription (a stream on NATS, a channel elsewhere): its
/// events in publish order, only those that match; cancelling it returns.
async fn client_subscription_in_order_and_cancelled(bus: &Bus) {
    // Every step bounded, so that a stall names itself.
    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .unwrap_or_else(|_| panic!("{what}: stalled for 20 s"))
    }
    let prefix = bus.name("cev");
    let reader = within("connect the reader", bus.client()).await;
    let mut sub = within(
        "subscribe",
        reader.subscribe(&[format!("{prefix}.a.*").as_str()]),
    )
    .await
    .unwrap();
    let client = within("connect the publisher", bus.client()).await;
    // The ZeroMQ forwarder needs the subscription to travel: publish until
    // one lands.
    let warm = format!("{prefix}.a.warmup");
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < give_up, "no event within 10 s");
        within("publish a warm-up", client.publish(&warm, &0u32))
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await {
            break;
        }
    }
    for n in 1..=50u32 {
        within("publish", client.publish(&format!("{prefix}.b.x"), &n))
            .await
            .unwrap();
        within("publish", client.publish(&format!("{prefix}.a.x"), &n))
            .await
            .unwrap();
    }
    let mut ns = Vec::new();
    while ns.len() < 50 {
        let event = within("the next event", sub.recv())
            .await
            .expect("the subscription is live");
        if event.topic == warm {
            continue;
        }
        assert_eq!(event.topic, format!("{prefix}.a.x"), "only matching topics");
        ns.push(event.payload.as_u64().unwrap());
    }
    assert_eq!(
        ns,
        (1..=50).collect::<Vec<_>>(),
        "in publish order, once each"
    );
    within("cancel", sub.cancel()).await;
}

/// What the queue test's consumer did: attempts per job number.
type Attempts = Arc<Mutex<BTreeMap<u32, u32>>>;

async fn queue_retry_and_dead_letter(bus: &Bus) {
    let queue = bus.name("work");
    let attempts: Attempts = Arc::default();
    let done: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (a, d) = (attempts.clone(), done.clone());
    let h = Service::new(bus.name("worker"))
        .consume(&queue, move |Args(n): Args<u32>| {
            let (a, d) = (a.clone(), d.clone());
            async move {
                let attempt = {
                    let mut a = a.lock().unwrap();
                    let e = a.entry(n).or_default();
                    *e += 1;
                    *e
                };
                match n % 10 {
                    3 => Err(RpcError::permanent(format!("job {n} can never work"))),
                    5 if attempt == 1 => Err(RpcError::internal("flaky once")),
                    7 => Err(RpcError::internal("always fails")),
                    _ => {
                        d.lock().unwrap().push(n);
                        Ok(())
                    }
                }
            }
        })
        .prefetch(4)
        .max_attempts(3)
        .start(bus.connect().await)
        .await
        .unwrap();
    let producer = bus.connect().await;
    let client = Client::new(producer.clone());
    for n in 0..30u32 {
        client.enqueue(&queue, &n).await.unwrap();
    }
    producer
        .enqueue(&queue, Job::new("this is not json"))
        .await
        .unwrap();
    let dead_queue = format!("{queue}.dead");
    let dead = eventually(Duration::from_secs(30), "7 dead jobs", || async {
        match producer
            .queue_command(&dead_queue, QueueCommand::Peek { count: 100 })
            .await
            .ok()?
        {
            QueueReply::Jobs(j) if j.len() >= 7 => Some(j),
            _ => None,
        }
    })
    .await;
    let done = eventually(Duration::from_secs(30), "24 jobs done", || async {
        let d = done.lock().unwrap().clone();
        (d.len() >= 24).then_some(d)
    })
    .await;
    let mut done_sorted = done.clone();
    done_sorted.sort_unstable();
    let expected: Vec<u32> = (0..30).filter(|n| ![3, 7].contains(&(n % 10))).collect();
    assert_eq!(done_sorted, expected, "every good job done exactly once");
    assert_eq!(dead.len(), 7, "{dead:?}");
    let reasons: Vec<&str> = dead.iter().filter_map(|j| j.reason.as_deref()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("can never work"))
            .count(),
        3
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("gave up after 3 attempts"))
            .count(),
        3
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("cannot decode"))
            .count(),
        1
    );
    let a = attempts.lock().unwrap().clone();
    assert_eq!(a[&5], 2, "a flaky job is retried once");
    assert_eq!(a[&7], 3, "max_attempts bounds the retries");
    assert_eq!(a[&3], 1, "a permanent failure is not retried");
    let stats = muster_test::queue_stats(&producer, &queue).await;
    assert_eq!(
        (stats.ready, stats.in_flight.unwrap_or(0), stats.dead),
        (0, 0, 7),
        "{stats:?}"
    );
    // The operator puts the dead jobs back: the permanent ones fail again.
    h.stop().await;
    assert_eq!(
        producer
            .queue_command(&queue, QueueCommand::RequeueDead)
            .await
            .unwrap(),
        QueueReply::Count(7)
    );
    assert_eq!(
        producer
            .queue_command(&queue, QueueCommand::Purge)
            .await
            .unwrap(),
        QueueReply::Count(7)
    );
}

async fn queue_balanced_consumers(bus: &Bus) {
    let queue = bus.name("shared");
    let seen: Arc<Mutex<HashMap<u32, Vec<String>>>> = Arc::default();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let seen = seen.clone();
        handles.push(
            Service::new(bus.name("balanced"))
                .consume(&queue, move |ctx: Ctx, Args(n): Args<u32>| {
                    let seen = seen.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        seen.lock()
                            .unwrap()
                            .entry(n)
                            .or_default()
                            .push(ctx.instance().to_owned());
                        Ok::<_, RpcError>(())
                    }
                })
                .prefetch(8)
                .start(bus.connect().await)
                .await
                .unwrap(),
        );
    }
    let client = bus.client().await;
    for n in 0..300u32 {
        client.enqueue(&queue, &n).await.unwrap();
    }
    let seen = eventually(Duration::from_secs(30), "300 jobs", || async {
        let s = seen.lock().unwrap().clone();
        (s.len() >= 300).then_some(s)
    })
    .await;
    assert!(
        seen.values().all(|who| who.len() == 1),
        "no job twice without a failure"
    );
    let by: HashSet<&String> = seen.values().flatten().collect();
    assert_eq!(by.len(), 2, "both consumers took jobs");
    for h in handles {
        h.stop().await;
    }
}

async fn state_replicates(bus: &Bus) {
    use muster::state::Full;
    let owner_name = bus.name("counter");
    let owner = Service::new(&owner_name)
        .state_out::<Full<u64>>("count")
        .start(bus.connect().await)
        .await
        .unwrap();
    let reader = Service::new(bus.name("watcher"))
        .state_in::<Full<u64>>(&format!("{owner_name}/count"))
        .start(bus.connect().await)
        .await
        .unwrap();
    for n in 1..=200u64 {
        owner.ctx().set_state(n).await.unwrap();
    }
    eventually(Duration::from_secs(20), "reader holds 200", || async {
        let s = reader.ctx().state::<Full<u64>>()?;
        (s.value().0 == 200).then_some(())
    })
    .await;
    reader.stop().await;
    owner.stop().await;
}

async fn claim_has_one_winner(bus: &Bus) {
    let (a, b) = (bus.connect().await, bus.connect().await);
    let key = bus.name("fire-0900");
    let ttl = Duration::from_secs(30);
    let first = a.claim(&key, "holder-a", ttl).await.unwrap();
    let second = b.claim(&key, "holder-b", ttl).await.unwrap();
    let again = a.claim(&key, "holder-a", ttl).await.unwrap();
    assert!(first && !second && again, "{first} {second} {again}");
}

async fn discovery_lists_methods_and_queues(bus: &Bus) {
    let svc = bus.name("described");
    let h = Service::new(&svc)
        .rpc("add", add)
        .consume(&bus.name("inbox"), |Args(_): Args<u32>| async {
            Ok::<_, RpcError>(())
        })
        .start(bus.connect().await)
        .await
        .unwrap();
    let client = bus.client().await;
    let found = muster_test::wait_registered(&client, &svc, 1).await;
    let add = found[0].method("add").expect("add is listed");
    let schema = add.params.as_ref().expect("with its params schema");
    assert!(schema.to_string().contains("\"a\""), "{schema}");
    assert_eq!(found[0].queues, vec![bus.name("inbox")]);
    h.stop().await;
    eventually(Duration::from_secs(10), "gone after stop", || async {
        let all = client.instances().await.ok()?;
        (!all.iter().any(|i| i.service == svc)).then_some(())
    })
    .await;
}

/// The group's only member is stopped, 10,000 events are published, it
/// starts again and receives all 10,000, in order; events on topics the
/// group does not keep are not among them.
async fn durable_subscription_keeps_events_while_down(bus: &Bus) {
    const EVENTS: u32 = 10_000;
    let prefix = bus.name("dur");
    let group = bus.name("audit");
    let member = |got: Arc<Mutex<Vec<u32>>>| {
        Service::new(bus.name("auditor"))
            .subscribe(&format!("{prefix}.kept.*"), move |Args(n): Args<u32>| {
                let got = got.clone();
                async move {
                    got.lock().unwrap().push(n);
                    Ok::<_, RpcError>(())
                }
            })
            .durable(&group)
    };
    let got: Arc<Mutex<Vec<u32>>> = Arc::default();
    // Joining declares the group; from then on the bus keeps its events.
    let first = member(got.clone())
        .start(bus.connect().await)
        .await
        .unwrap();
    first.stop().await;
    let client = bus.client().await;
    // A marker after the events, on a plain subscription: once it is
    // here, the bus has passed every event before it, so the group kept
    // them while no member ran.
    let mut marker = client
        .subscribe(&[format!("{prefix}.marker").as_str()])
        .await
        .unwrap();
    for n in 1..=EVENTS {
        client
            .publish(&format!("{prefix}.kept.x"), &n)
            .await
            .unwrap();
        if n % 1000 == 0 {
            client
                .publish(&format!("{prefix}.other"), &0u32)
                .await
                .unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        client
            .publish(&format!("{prefix}.marker"), &0u32)
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_millis(200), marker.recv()).await;
        if matches!(seen, Ok(Some(_))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the marker never came"
        );
    }
    marker.cancel().await;
    assert!(got.lock().unwrap().is_empty(), "no member ran meanwhile");
    let again = member(got.clone())
        .start(bus.connect().await)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "10,000 kept events", || async {
        (got.lock().unwrap().len() >= EVENTS as usize).then_some(())
    })
    .await;
    // One more event, to the running member: delivery is in order, so
    // once it is here any extra copy of the kept ones would be too.
    client
        .publish(&format!("{prefix}.kept.x"), &(EVENTS + 1))
        .await
        .unwrap();
    let mut events = eventually(Duration::from_secs(30), "the closing event", || async {
        let g = got.lock().unwrap().clone();
        g.contains(&(EVENTS + 1)).then_some(g)
    })
    .await;
    assert_eq!(
        events.pop(),
        Some(EVENTS + 1),
        "the closing event comes last"
    );
    assert_eq!(
        events.len(),
        EVENTS as usize,
        "no more than the events published"
    );
    let first_wrong = events
        .iter()
        .zip(1..=EVENTS)
        .position(|(got, want)| *got != want);
    assert_eq!(
        first_wrong,
        None,
        "every kept event once, in publish order; around the first out of place: {:?}",
        first_wrong.map(|at| &events[at.saturating_sub(3)..(at + 3).min(events.len())])
    );
    again.stop().await;
}

/// A group with the largest bounds a user may ask for ("keep everything,
/// for ever") is taken by every bus and does not break publishing. (On
/// Redis the publish script once trimmed such a group with a negative id,
/// failing every publish of the prefix.)
async fn durable_with_the_largest_bounds(bus: &Bus) {
    let prefix = bus.name("big");
    let group = bus.name("all");
    let topics = format!("{prefix}.>");
    let forever = muster::Retention::default()
        .max_events(u64::MAX)
        .max_bytes(u64::MAX)
        .max_age(Duration::from_secs(u64::MAX / 4));
    let client = bus.client().await;
    client
        .subscribe_durable(&group, &[topics.as_str()], forever)
        .await
        .unwrap()
        .cancel()
        .await;
    for n in 0..3u32 {
        client
            .publish(&format!("{prefix}.line"), &n)
            .await
            .expect("publishing works");
    }
    let mut sub = client
        .subscribe_durable(&group, &[topics.as_str()], forever)
        .await
        .unwrap();
    for n in 0..3u64 {
        let e = tokio::time::timeout(Duration::from_secs(20), sub.recv())
            .await
            .expect("kept events arrive")
            .unwrap();
        assert_eq!(e.payload.as_u64(), Some(n));
    }
    sub.cancel().await;
}

macro_rules! suite {
    ($kind:ident: $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let name = concat!(stringify!($kind), "::", stringify!($test));
                if let Some(bus) = super::Bus::open(super::Kind::$kind, name).await {
                    super::$test(&bus).await;
                }
            }
        )*
    };
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod zmq {
            suite!(Zmq: $($test),*);
        }
        mod redis {
            suite!(Redis: $($test),*);
        }
        mod amqp {
            suite!(Amqp: $($test),*);
        }
        mod nats {
            suite!(Nats: $($test),*);
        }
    };
}

conformance!(
    rpc_call_and_errors,
    rpc_balanced_over_instances,
    a_service_is_callable_once_started,
    rpc_timeout,
    rpc_deadline_cancels_the_handler_and_its_nested_call,
    rpc_cancelled_when_its_caller_gives_up,
    rpc_carries_the_trace_context_to_nested_calls,
    events_carry_the_trace_context_of_their_publisher,
    jobs_carry_the_trace_context_of_their_enqueuer,
    events_in_order_and_filtered,
    client_subscription_in_order_and_cancelled,
    queue_retry_and_dead_letter,
    queue_balanced_consumers,
    state_replicates,
    claim_has_one_winner,
    discovery_lists_methods_and_queues,
    durable_subscription_keeps_events_while_down,
    durable_with_the_largest_bounds,
);
