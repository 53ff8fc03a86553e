//! Middleware: `tower` layers around a service's RPC methods
//! (`Service::layer`), so the ecosystem's concurrency, rate, load-shed and
//! timeout layers, and a user's own (auth from a header, say), apply to
//! every method of the service at once; and around a client's calls
//! (`Client::layer`, the `client` module).
//!
//! The stack sits between the instance's dispatch (which decodes the
//! request, enforces the deadline and counts statistics) and the
//! method's handler; its request is the [`Invocation`], whose header and
//! params a layer may read. A layer's refusal becomes a JSON-RPC error the
//! client can tell apart from a failure: a shed or limited request is
//! -32002 (overloaded, try again), a layer's timeout -32000, an
//! [`RpcError`] a layer returns is answered as it is.

mod client;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tower::util::BoxService;
use tower::{Service as TowerService, ServiceExt};

use crate::extract::Invocation;
use crate::service::BoxError;
use crate::{RpcError, code};

pub use client::{Calls, OutgoingCall, RetryIdempotent, Retrying};
pub(crate) use client::{ClientLayerFn, erase as erase_client, stack as client_stack};

/// What a layer wraps: the service's methods as one `tower` service.
pub type Methods = BoxService<Invocation, Box<RawValue>, BoxError>;

/// A layer, type-erased and reusable (each instance builds its stack).
pub(crate) type LayerFn = Arc<dyn Fn(Methods) -> Methods + Send + Sync>;

/// Erases `layer` into a [`LayerFn`].
pub(crate) fn erase<L>(layer: L) -> LayerFn
where
    L: tower::Layer<Methods> + Send + Sync + 'static,
    L::Service: TowerService<Invocation, Response = Box<RawValue>> + Send + 'static,
    <L::Service as TowerService<Invocation>>::Error: Into<BoxError>,
    <L::Service as TowerService<Invocation>>::Future: Send + 'static,
{
    Arc::new(move |inner| BoxService::new(layer.layer(inner).map_err(Into::into)))
}

/// The innermost service: the handler the dispatch chose for the method.
struct Route;

impl TowerService<Invocation> for Route {
    type Response = Box<RawValue>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Box<RawValue>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut inv: Invocation) -> Self::Future {
        let Some(handler) = inv.route.take() else {
            return Box::pin(std::future::ready(Err(BoxError::from(RpcError::internal(
                "a layer made a request of its own: no method to route it to",
            )))));
        };
        let fut = handler.call(inv);
        Box::pin(async move { fut.await.map_err(BoxError::from) })
    }
}

/// One instance's stack of layers. `tower` services are driven by one
/// caller at a time (`poll_ready` then `call`); requests take turns for
/// that step only, and run side by side after it.
pub(crate) struct Stack(tokio::sync::Mutex<Methods>);

impl Stack {
    /// `layers` around the methods, the first given outermost.
    pub(crate) fn new(layers: &[LayerFn]) -> Option<Self> {
        if layers.is_empty() {
            return None;
        }
        let mut svc = BoxService::new(Route);
        for layer in layers.iter().rev() {
            svc = layer(svc);
        }
        Some(Self(tokio::sync::Mutex::new(svc)))
    }

    /// Runs `inv` through the layers to its handler.
    pub(crate) async fn call(&self, inv: Invocation) -> Result<Box<RawValue>, RpcError> {
        let fut = {
            let mut svc = self.0.lock().await;
            match svc.ready().await {
                Ok(ready) => ready.call(inv),
                Err(e) => return Err(refusal(e)),
            }
        };
        fut.await.map_err(refusal)
    }
}

/// A layer's error as the JSON-RPC error the caller gets.
pub(crate) fn refusal(e: BoxError) -> RpcError {
    let e = match e.downcast::<RpcError>() {
        Ok(rpc) => return *rpc,
        Err(e) => e,
    };
    if e.is::<tower::load_shed::error::Overloaded>() {
        return RpcError::new(
            code::OVERLOADED,
            "shed: the service is at its limit; try again",
        );
    }
    if e.is::<tower::timeout::error::Elapsed>() {
        return RpcError::timeout("a layer's timeout");
    }
    RpcError::internal(e)
}
