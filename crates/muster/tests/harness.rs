//! The service framework on the in-memory transport: what a user's unit
//! tests look like.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use muster::prelude::*;
use muster::testing::TestBus;
use muster::{StartOptions, code};
use serde_json::{Value, json};

#[derive(Debug, Deserialize, JsonSchema)]
struct Inner {
    count: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Nested {
    name: String,
    inner: Inner,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Out {
    total: u32,
}

#[derive(Debug, Deserialize, Serialize)]
struct Settings {
    factor: u32,
}

async fn total(Config(s): Config<Settings>, Args(n): Args<Nested>) -> Result<Out, RpcError> {
    Ok(Out {
        total: n.inner.count * s.factor + n.name.len() as u32,
    })
}

fn calc() -> Service {
    Service::new("calc")
        .config::<Settings>()
        .rpc("total", total)
}

#[tokio::test]
async fn typed_calls_config_and_coded_errors() {
    let bus = TestBus::new();
    bus.start_with_config(calc(), json!({"factor": 10}))
        .await
        .unwrap();
    let c = bus.client();

    let r: Out = c
        .call("calc.total", &json!({"name": "ab", "inner": {"count": 3}}))
        .await
        .unwrap();
    assert_eq!(r, Out { total: 32 });

    let e = c
        .call::<_, Value>(
            "calc.total",
            &json!({"name": "ab", "inner": {"count": "many"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, code::INVALID_PARAMS);
    assert_eq!(e.data.unwrap()["path"], "inner.count");

    let e = c
        .call::<_, Value>("calc.nope", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::METHOD_NOT_FOUND);
    let e = c.call::<_, Value>("ghost.x", &json!({})).await.unwrap_err();
    assert_eq!(e.code, code::METHOD_NOT_FOUND);
    let e = c.call::<_, Value>("no-dot", &json!({})).await.unwrap_err();
    assert_eq!(e.code, code::INVALID_REQUEST);
}

#[tokio::test]
async fn missing_config_fails_start() {
    let bus = TestBus::new();
    let e = bus.start_with_config(calc(), json!({})).await.unwrap_err();
    assert_eq!(e.to_string(), "config: missing key `factor`");
}

#[tokio::test]
async fn msgpack_bodies() {
    let bus = TestBus::new();
    bus.start_with_config(calc(), json!({"factor": 2}))
        .await
        .unwrap();
    let c = bus
        .client()
        .clone()
        .with_content_type(muster::wire::ContentType::MsgPack);
    let r: Out = c
        .call("calc.total", &json!({"name": "", "inner": {"count": 4}}))
        .await
        .unwrap();
    assert_eq!(r.total, 8);
}

#[tokio::test]
async fn handlers_publish_and_subscribers_receive() {
    let bus = TestBus::new();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let listener = Service::new("listener").subscribe("greet.*", move |Args(who): Args<String>| {
        let seen = seen_tx.clone();
        async move {
            let _ = seen.send(who);
        }
    });
    let greeter =
        Service::new("greeter").rpc("greet", |ctx: Ctx, Args(who): Args<String>| async move {
            ctx.publish("greet.done", &who).await?;
            Ok::<_, RpcError>(format!("hello {who}"))
        });
    bus.start(listener).await.unwrap();
    bus.start(greeter).await.unwrap();
    let r: String = bus
        .client()
        .call("greeter.greet", &json!("ann"))
        .await
        .unwrap();
    assert_eq!(r, "hello ann");
    let got = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await;
    assert_eq!(
        got,
        Ok(Some("ann".to_owned())),
        "the subscriber saw the event"
    );
    assert!(seen.try_recv().is_err(), "and saw it once");
}

#[tokio::test]
async fn services_call_each_other_and_deadlines_propagate() {
    let bus = TestBus::new();
    let slow = Service::new("slow").rpc("wait", |Args(ms): Args<u64>| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    });
    let front = Service::new("front").rpc("relay", |ctx: Ctx, Args(ms): Args<u64>| async move {
        let r: Result<u64, RpcError> = ctx.request("slow.wait", &ms).await;
        r
    });
    muster::Group::new()
        .service(slow)
        .service(front)
        .start(bus.transport())
        .await
        .unwrap();
    let ok: u64 = bus.client().call("front.relay", &5).await.unwrap();
    assert_eq!(ok, 5);
    // The relay's own deadline (200 ms) caps its inner call.
    let e = bus
        .client()
        .call_with::<_, u64>(
            "front.relay",
            &2_000,
            CallOptions::default().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, code::TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn the_clock_is_controllable() {
    // With paused time a 5 s timeout elapses instantly: tests need not sleep.
    let bus = TestBus::new();
    bus.start(Service::new("never").rpc("hang", || async {
        std::future::pending::<()>().await;
    }))
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let e = bus
        .client()
        .call::<_, Value>("never.hang", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code, code::TIMEOUT);
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn main_mode_and_shutdown_hook() {
    let bus = TestBus::new();
    let stopped = Arc::new(AtomicUsize::new(0));
    let s2 = stopped.clone();
    let svc = Service::new("job")
        .main(|ctx: Ctx| async move {
            ctx.publish("job.done", &1).await?;
            Ok::<_, muster::Error>(())
        })
        .on_shutdown(move |_ctx| {
            let s = s2.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
            }
        });
    let mut h = svc
        .start_with(bus.transport(), StartOptions::default().main_mode(true))
        .await
        .unwrap();
    h.main_finished().await.unwrap();
    h.stop().await;
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn builtins_answer_info_and_stats() {
    let bus = TestBus::new();
    let h = bus
        .start_with_config(calc(), json!({"factor": 1}))
        .await
        .unwrap();
    let _: Value = bus
        .client()
        .call("calc.total", &json!({"name": "x", "inner": {"count": 1}}))
        .await
        .unwrap();
    let info: Value = bus.client().call("calc.$info", &json!({})).await.unwrap();
    assert_eq!(info["instance"], h.instance());
    assert_eq!(info["config"]["factor"], 1);
    assert!(info["methods"][0]["params"]["properties"]["inner"].is_object());
    let stats = bus.client().stats(Some("calc")).await.unwrap();
    let s = stats[0].as_ref().unwrap();
    assert_eq!(s.methods["total"].num_requests, 1);
    let pong: String = bus.client().call("calc.$ping", &json!({})).await.unwrap();
    assert_eq!(pong, "pong");
}

#[test]
#[should_panic(expected = "method \"a\" is already defined")]
fn duplicate_methods_panic_at_the_call_site() {
    let _ = Service::new("dup")
        .rpc("a", || async { 1 })
        .rpc("a", || async { 2 });
}

#[tokio::test]
async fn main_mode_without_main_is_refused_before_serving() {
    let bus = TestBus::new();
    let e = Service::new("plain")
        .rpc("x", || async { 1 })
        .start_with(bus.transport(), StartOptions::default().main_mode(true))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no main function"), "{e}");
    assert!(
        bus.client().instances().await.unwrap().is_empty(),
        "nothing left serving"
    );
}
