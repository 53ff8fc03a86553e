//! [`Handler`]: async functions of extractors, erased for dispatch.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::RpcError;
use crate::extract::{FromInvocation, Invocation};
use crate::reply::IntoReply;
use crate::transport::BoxFuture;

/// Schemas of a handler's params and result.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schemas {
    pub(crate) params: Option<Value>,
    pub(crate) result: Option<Value>,
}

/// An async function usable as an RPC method or event handler: its
/// arguments are [`FromInvocation`] extractors and it returns an
/// [`IntoReply`]. `T` is the tuple of argument types (for coherence only).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a muster handler",
    note = "a handler is an `async fn` whose arguments are extractors (Args<T>, Ctx, Config<T>, Header) and whose result is `Result<T: Serialize + JsonSchema, E: Into<RpcError>>` or a plain serializable value"
)]
pub trait Handler<T>: Clone + Send + Sync + 'static {
    /// Runs the handler.
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Box<RawValue>, RpcError>>;

    /// Describes params and result.
    #[doc(hidden)]
    fn schemas() -> (Option<Value>, Option<Value>);
}

macro_rules! impl_handler {
    ($($ty:ident),*) => {
        #[allow(non_snake_case, unused_variables, unused_mut)]
        impl<F, Fut, R, $($ty,)*> Handler<($($ty,)*)> for F
        where
            F: Fn($($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply,
            $($ty: FromInvocation + Send + 'static,)*
        {
            fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Box<RawValue>, RpcError>> {
                $(
                    let $ty = match $ty::from_invocation(&inv) {
                        Ok(v) => v,
                        Err(e) => return Box::pin(std::future::ready(Err(e))),
                    };
                )*
                let fut = (self)($($ty),*);
                Box::pin(async move { fut.await.into_reply() })
            }

            fn schemas() -> (Option<Value>, Option<Value>) {
                let mut params: Option<schemars::Schema> = None;
                $(
                    if params.is_none() {
                        params = $ty::params_schema();
                    }
                )*
                let result = R::result_schema();
                (
                    params.map(|s| s.to_value()),
                    result.map(|s| s.to_value()),
                )
            }
        }
    };
}

impl_handler!();
impl_handler!(T1);
impl_handler!(T1, T2);
impl_handler!(T1, T2, T3);
impl_handler!(T1, T2, T3, T4);
impl_handler!(T1, T2, T3, T4, T5);
impl_handler!(T1, T2, T3, T4, T5, T6);

/// A handler with its type parameter erased.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Box<RawValue>, RpcError>>;
}

struct Erased<H, T> {
    handler: H,
    _marker: PhantomData<fn() -> T>,
}

impl<H: Handler<T>, T: 'static> ErasedHandler for Erased<H, T> {
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Box<RawValue>, RpcError>> {
        self.handler.call(inv)
    }
}

/// Erases a handler and computes its schemas.
pub(crate) fn erase<H: Handler<T>, T: 'static>(handler: H) -> (Arc<dyn ErasedHandler>, Schemas) {
    let (params, result) = H::schemas();
    (
        Arc::new(Erased {
            handler,
            _marker: PhantomData,
        }),
        Schemas { params, result },
    )
}
