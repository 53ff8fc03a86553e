//! `Service::layer`: tower's concurrency limit, load shedding and rate
//! limit on a service's methods, and a layer of the user's own that reads
//! the request's header. A shed or limited call gets -32002, which a
//! client tells apart from a failure; the calls within the limits succeed.

use std::sync::Arc;
use std::time::Duration;

use muster::prelude::*;
use muster::testing::TestBus;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

/// A method that says when a call is in it (`entered`), and holds the
/// call until told to go on (`gate`).
fn gated(name: &str, entered: Arc<Semaphore>, gate: Arc<Semaphore>) -> Service {
    Service::new(name).rpc("hold", move || {
        let (entered, gate) = (entered.clone(), gate.clone());
        async move {
            entered.add_permits(1);
            let _permit = gate.acquire().await.map_err(RpcError::internal)?;
            Ok::<_, RpcError>("done")
        }
    })
}

#[tokio::test]
async fn a_concurrency_limit_of_two_sheds_the_third_call() {
    let bus = TestBus::new();
    let (entered, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let _svc = gated("limited", entered.clone(), gate.clone())
        .layer(
            ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(2)
                .into_inner(),
        )
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus.client().clone();
    let call = |c: Client| async move { c.call::<_, String>("limited.hold", &()).await };
    let first = tokio::spawn(call(client.clone()));
    let second = tokio::spawn(call(client.clone()));
    // Both are in their handlers before the third comes.
    entered.acquire_many(2).await.unwrap().forget();
    let third = call(client.clone()).await.unwrap_err();
    assert_eq!(third.code, muster::code::OVERLOADED, "{third}");
    assert!(
        third.is_retryable(),
        "shed calls may be tried again: {third}"
    );
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), "done");
    assert_eq!(second.await.unwrap().unwrap(), "done");
    // With room again, a call goes through.
    gate.add_permits(1);
    assert_eq!(call(client).await.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_sheds_what_is_over_the_rate() {
    let bus = TestBus::new();
    let _svc = Service::new("rated")
        .rpc("ping", || async { Ok::<_, RpcError>("pong") })
        .layer(
            ServiceBuilder::new()
                .load_shed()
                .rate_limit(2, Duration::from_secs(10))
                .into_inner(),
        )
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus.client().clone();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(client.call::<_, String>("rated.ping", &()).await);
    }
    assert_eq!(answers[0].as_deref().unwrap(), "pong");
    assert_eq!(answers[1].as_deref().unwrap(), "pong");
    let shed = answers[2].as_ref().unwrap_err();
    assert_eq!(shed.code, muster::code::OVERLOADED, "{shed}");
}

/// A layer of one's own: callers must say who they are in the request's
/// transaction (a stand-in for a header a gateway sets).
#[derive(Clone)]
struct NeedsTransaction<S>(S);

impl<S> tower::Service<muster::extract::Invocation> for NeedsTransaction<S>
where
    S: tower::Service<muster::extract::Invocation, Error = muster::BoxError>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = muster::BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<S::Response, muster::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, inv: muster::extract::Invocation) -> Self::Future {
        if inv.header().transaction.is_none() {
            return Box::pin(std::future::ready(Err(muster::BoxError::from(
                RpcError::unauthorized("say which transaction you call for"),
            ))));
        }
        Box::pin(self.0.call(inv))
    }
}

#[tokio::test]
async fn a_layer_of_ones_own_reads_the_header_and_refuses_with_its_error() {
    let bus = TestBus::new();
    let _svc = Service::new("guarded")
        .rpc("ping", || async { Ok::<_, RpcError>("pong") })
        .layer(tower::layer::layer_fn(NeedsTransaction))
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus.client().clone();
    let refused = client
        .call::<_, String>("guarded.ping", &())
        .await
        .unwrap_err();
    assert_eq!(refused.code, muster::code::UNAUTHORIZED, "{refused}");
    let ok: String = client
        .call_with(
            "guarded.ping",
            &(),
            CallOptions::default().transaction(Some("T1".into())),
        )
        .await
        .unwrap();
    assert_eq!(ok, "pong");
}

/// `tower`'s own filter, as `docs/tracing.md` shows it for per-caller
/// rules: its predicate's `RpcError` reaches the caller as it is.
#[tokio::test]
async fn towers_filter_refuses_with_its_predicates_error() {
    let bus = TestBus::new();
    let _svc = Service::new("ledger")
        .rpc("close_day", || async { Ok::<_, RpcError>("closed") })
        .layer(tower::filter::FilterLayer::new(
            |inv: muster::extract::Invocation| match inv.header().transaction {
                Some(_) => Ok(inv),
                None => Err(RpcError::unauthorized(
                    "close_day runs inside a transaction",
                )),
            },
        ))
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus.client().clone();
    let refused = client
        .call::<_, String>("ledger.close_day", &())
        .await
        .unwrap_err();
    assert_eq!(refused.code, muster::code::UNAUTHORIZED, "{refused}");
    let ok: String = client
        .call_with(
            "ledger.close_day",
            &(),
            CallOptions::default().transaction(Some("T1".into())),
        )
        .await
        .unwrap();
    assert_eq!(ok, "closed");
}

// Layers on the calling side (`Client::layer`).

#[tokio::test]
async fn a_client_concurrency_limit_sheds_its_third_call_before_it_leaves() {
    let bus = TestBus::new();
    let (entered, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let _svc = gated("open", entered.clone(), gate.clone())
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus.client().clone().layer(
        ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(2)
            .into_inner(),
    );
    let call = |c: Client| async move { c.call::<_, String>("open.hold", &()).await };
    let first = tokio::spawn(call(client.clone()));
    let second = tokio::spawn(call(client.clone()));
    entered.acquire_many(2).await.unwrap().forget();
    let third = call(client.clone()).await.unwrap_err();
    assert_eq!(third.code, muster::code::OVERLOADED, "{third}");
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), "done");
    assert_eq!(second.await.unwrap().unwrap(), "done");
    gate.add_permits(1);
    assert_eq!(call(client).await.unwrap(), "done");
}

/// A method that is unavailable for its first `failures` calls, and
/// counts every call.
fn flaky(name: &str, failures: u32, calls: Arc<std::sync::atomic::AtomicU32>) -> Service {
    use std::sync::atomic::Ordering;
    Service::new(name).rpc("get", move || {
        let calls = calls.clone();
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) < failures {
                return Err(RpcError::new(muster::code::UNAVAILABLE, "not yet"));
            }
            Ok::<_, RpcError>("got")
        }
    })
}

#[tokio::test]
async fn idempotent_methods_are_tried_again_and_others_are_not() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let bus = TestBus::new();
    let (idem, other) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let _a = flaky("stock", 2, idem.clone())
        .start(bus.transport())
        .await
        .unwrap();
    let _b = flaky("orders", 2, other.clone())
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus.client().clone().layer(
        muster::layer::RetryIdempotent::new(["stock.*"])
            .attempts(3)
            .backoff(Duration::from_millis(5)),
    );
    // Two failures, then the third attempt answers.
    assert_eq!(
        client.call::<_, String>("stock.get", &()).await.unwrap(),
        "got"
    );
    assert_eq!(idem.load(Ordering::SeqCst), 3);
    // Not declared idempotent: its failure is the answer.
    let e = client
        .call::<_, String>("orders.get", &())
        .await
        .unwrap_err();
    assert_eq!(e.code, muster::code::UNAVAILABLE, "{e}");
    assert_eq!(other.load(Ordering::SeqCst), 1);
    // A failure that another attempt cannot cure is not retried.
    let unknown = client
        .call::<_, String>("stock.put", &())
        .await
        .unwrap_err();
    assert_eq!(unknown.code, muster::code::METHOD_NOT_FOUND, "{unknown}");
}

#[tokio::test]
async fn methods_their_service_declares_idempotent_are_tried_again() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let bus = TestBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    // Declared in the registry by the service itself.
    let _svc = flaky("ledger", 1, calls.clone())
        .idempotent()
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus
        .client()
        .clone()
        .layer(muster::layer::RetryIdempotent::declared().backoff(Duration::from_millis(5)));
    assert_eq!(
        client.call::<_, String>("ledger.get", &()).await.unwrap(),
        "got"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tower_retry_and_timeout_work_on_a_client_unchanged() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::retry::Policy;

    /// Retries every failure, up to `left` more times.
    #[derive(Clone)]
    struct Again(u32);
    impl Policy<muster::layer::OutgoingCall, Box<serde_json::value::RawValue>, muster::BoxError>
        for Again
    {
        type Future = std::future::Ready<()>;
        fn retry(
            &mut self,
            _: &mut muster::layer::OutgoingCall,
            result: &mut Result<Box<serde_json::value::RawValue>, muster::BoxError>,
        ) -> Option<Self::Future> {
            (result.is_err() && self.0 > 0).then(|| {
                self.0 -= 1;
                std::future::ready(())
            })
        }
        fn clone_request(
            &mut self,
            call: &muster::layer::OutgoingCall,
        ) -> Option<muster::layer::OutgoingCall> {
            Some(call.clone())
        }
    }

    let bus = TestBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let _svc = flaky("inventory", 1, calls.clone())
        .rpc("stall", || async {
            std::future::pending::<()>().await;
            Ok::<_, RpcError>(())
        })
        .start(bus.transport())
        .await
        .unwrap();
    let client = bus.client().clone().layer(
        ServiceBuilder::new()
            .timeout(Duration::from_millis(200))
            .retry(Again(1))
            .into_inner(),
    );
    assert_eq!(
        client
            .call::<_, String>("inventory.get", &())
            .await
            .unwrap(),
        "got"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let late = client
        .call::<_, ()>("inventory.stall", &())
        .await
        .unwrap_err();
    assert_eq!(late.code, muster::code::TIMEOUT, "{late}");
}
