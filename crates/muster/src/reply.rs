//! [`IntoReply`]: what a handler may return.

use schemars::{JsonSchema, Schema};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::RpcError;

/// Turns a handler's return value into a reply: a serializable value, or
/// `Result<T, E>` where `E` converts into [`RpcError`].
pub trait IntoReply {
    /// The reply as raw JSON, or the error to answer with.
    ///
    /// # Errors
    /// The handler's own error, or -32603 when the value cannot be encoded.
    fn into_reply(self) -> Result<Box<RawValue>, RpcError>;

    /// JSON Schema of the result.
    fn result_schema() -> Option<Schema>;
}

fn encode<T: Serialize>(v: &T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(v)
        .map_err(|e| RpcError::internal(format!("cannot encode result: {e}")))
}

impl<T, E> IntoReply for Result<T, E>
where
    T: Serialize + JsonSchema,
    E: Into<RpcError>,
{
    fn into_reply(self) -> Result<Box<RawValue>, RpcError> {
        match self {
            Ok(v) => encode(&v),
            Err(e) => Err(e.into()),
        }
    }

    fn result_schema() -> Option<Schema> {
        Some(schemars::schema_for!(T))
    }
}

macro_rules! plain_reply {
    ($($t:ty),*) => {$(
        impl IntoReply for $t {
            fn into_reply(self) -> Result<Box<RawValue>, RpcError> {
                encode(&self)
            }

            fn result_schema() -> Option<Schema> {
                Some(schemars::schema_for!($t))
            }
        }
    )*};
}

plain_reply!(
    (),
    &'static str,
    bool,
    String,
    i32,
    i64,
    u32,
    u64,
    f64,
    serde_json::Value
);
