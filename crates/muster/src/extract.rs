//! Extractors: the typed arguments of a handler, taken from the request.
//!
//! A handler is an async function whose arguments all implement
//! [`FromInvocation`]: `Args<T>` (the params, typed and validated), `Ctx`
//! (send, publish, ids), `Config<T>` (the service's typed config) and
//! `Header` (the wire header). An extractor that fails answers the caller
//! with a coded error and the handler does not run.

mod params;

use std::sync::Arc;

use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::RpcError;
use crate::ctx::Ctx;
use crate::wire::Header;

/// What a handler runs on: a request or an event, with its context.
pub struct Invocation {
    /// Boxed: a header is a few hundred bytes, and an invocation moves
    /// into the handler's future and the layers' futures.
    pub(crate) header: Box<Header>,
    /// Request params or event payload, as JSON.
    pub(crate) payload: Option<Box<RawValue>>,
    pub(crate) ctx: Ctx,
    /// The method's handler, for the innermost service of a layer stack
    /// (`layer.rs`); `None` outside one.
    pub(crate) route: Option<std::sync::Arc<dyn crate::handler::ErasedHandler>>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("header", &self.header)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl Invocation {
    /// The wire header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The raw JSON params (requests) or payload (events).
    pub fn payload(&self) -> Option<&RawValue> {
        self.payload.as_deref()
    }
}

/// Builds a handler argument from an invocation.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    note = "handler arguments are extractors: Args<T>, Ctx, Config<T>, Header"
)]
pub trait FromInvocation: Sized {
    /// Extracts the value, or the error to answer with.
    ///
    /// # Errors
    /// A coded error; for `Args<T>` a -32602 naming the field.
    fn from_invocation(inv: &Invocation) -> Result<Self, RpcError>;

    /// JSON Schema of the params, for extractors that read them.
    fn params_schema() -> Option<Schema> {
        None
    }
}

/// The params of a request (or the payload of an event), deserialized into
/// `T`. Params may be a JSON object (by field name) or an array (by field
/// order). A value that does not fit is answered with -32602 and the path
/// of the field at fault.
///
/// ```
/// use muster::prelude::*;
///
/// #[derive(Deserialize, JsonSchema)]
/// struct Shout { text: String, times: Option<u32> }
///
/// async fn shout(Args(a): Args<Shout>) -> Result<String, RpcError> {
///     Ok(a.text.repeat(a.times.unwrap_or(1) as usize))
/// }
/// # let _ = Service::new("echo").rpc("shout", shout);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Args<T>(pub T);

impl<T: DeserializeOwned + JsonSchema> FromInvocation for Args<T> {
    fn from_invocation(inv: &Invocation) -> Result<Self, RpcError> {
        let text = inv.payload.as_deref().map_or("{}", RawValue::get);
        params::decode(text).map(Args)
    }

    fn params_schema() -> Option<Schema> {
        Some(schemars::schema_for!(T))
    }
}

impl FromInvocation for Ctx {
    fn from_invocation(inv: &Invocation) -> Result<Self, RpcError> {
        Ok(inv.ctx.clone())
    }
}

impl FromInvocation for Header {
    fn from_invocation(inv: &Invocation) -> Result<Self, RpcError> {
        Ok((*inv.header).clone())
    }
}

/// The service's typed configuration, as declared with
/// [`Service::config`](crate::Service::config).
#[derive(Debug)]
pub struct Config<T>(pub Arc<T>);

impl<T> Clone for Config<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::ops::Deref for Config<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Send + Sync + 'static> FromInvocation for Config<T> {
    fn from_invocation(inv: &Invocation) -> Result<Self, RpcError> {
        inv.ctx.config::<T>().map(Config).ok_or_else(|| {
            RpcError::internal(format!(
                "handler asks for Config<{}> but the service declared another config type",
                std::any::type_name::<T>()
            ))
        })
    }
}
