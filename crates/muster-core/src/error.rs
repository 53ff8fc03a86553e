//! Errors: [`RpcError`] is what a caller sees from a method (JSON-RPC coded),
//! [`Error`] is a failure of the bus itself (connect, send, shutdown).

use std::fmt;

use serde::{Deserialize, Serialize};

/// JSON-RPC 2.0 and muster error codes.
///
/// The -32700..-32600 range is the JSON-RPC standard; -32000..-32099 is the
/// "server error" range, which muster uses for failures of the bus.
pub mod code {
    /// The body is not valid JSON (or MessagePack).
    pub const PARSE_ERROR: i64 = -32700;
    /// The message is not a valid request (bad frames, version, header).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such service or method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params do not fit the method's argument type; `data.path` names the field.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The handler failed in a way it did not describe.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The deadline passed before a reply came.
    pub const TIMEOUT: i64 = -32000;
    /// No instance could take the request, or it went away mid-request.
    pub const UNAVAILABLE: i64 = -32001;
    /// The instance is at its in-flight limit or shutting down.
    pub const OVERLOADED: i64 = -32002;
    /// The message is larger than the configured limit.
    pub const TOO_LARGE: i64 = -32003;
    /// The request lacks the right token (host control).
    pub const UNAUTHORIZED: i64 = -32004;
    /// A job that can never succeed: dead-letter it, do not retry.
    pub const PERMANENT: i64 = -32005;
}

/// A coded error reply, as carried in a JSON-RPC `error` member.
///
/// Handlers return it (or any type convertible into it); callers receive it
/// with the code intact, so they can match on [`RpcError::code`] rather than
/// on text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// The JSON-RPC code; see [`code`].
    pub code: i64,
    /// A short human description.
    pub message: String,
    /// Structured detail; for -32602 `{"path": "field.sub"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl RpcError {
    /// An error with an application code (use codes outside -32768..-32000).
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attaches structured data.
    #[must_use]
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// -32700: the body could not be decoded.
    pub fn parse_error(detail: impl fmt::Display) -> Self {
        Self::new(code::PARSE_ERROR, format!("parse error: {detail}"))
    }

    /// -32600: the message is not a valid request.
    pub fn invalid_request(detail: impl fmt::Display) -> Self {
        Self::new(code::INVALID_REQUEST, format!("invalid request: {detail}"))
    }

    /// -32601: no such method (or service).
    pub fn method_not_found(target: impl fmt::Display) -> Self {
        Self::new(
            code::METHOD_NOT_FOUND,
            format!("method not found: {target}"),
        )
    }

    /// -32602 with the offending field path in `data.path`.
    pub fn invalid_params(path: &str, detail: impl fmt::Display) -> Self {
        let where_ = if path.is_empty() || path == "." {
            "params".to_owned()
        } else {
            format!("params.{path}")
        };
        Self::new(code::INVALID_PARAMS, format!("invalid {where_}: {detail}"))
            .with_data(serde_json::json!({ "path": path }))
    }

    /// -32603: an unexpected failure inside the handler.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(code::INTERNAL_ERROR, format!("internal error: {detail}"))
    }

    /// -32000: the deadline passed.
    pub fn timeout(detail: impl fmt::Display) -> Self {
        Self::new(code::TIMEOUT, format!("timeout: {detail}"))
    }

    /// -32001: nobody could answer.
    pub fn unavailable(detail: impl fmt::Display) -> Self {
        Self::new(code::UNAVAILABLE, format!("unavailable: {detail}"))
    }

    /// -32002: the instance is saturated or draining.
    pub fn overloaded(detail: impl fmt::Display) -> Self {
        Self::new(code::OVERLOADED, format!("overloaded: {detail}"))
    }

    /// -32003: the message is over the size limit.
    pub fn too_large(size: usize, limit: usize) -> Self {
        Self::new(
            code::TOO_LARGE,
            format!("message of {size} bytes is over the limit of {limit}"),
        )
    }

    /// -32004: a control request without the host's token.
    pub fn unauthorized(detail: impl fmt::Display) -> Self {
        Self::new(code::UNAUTHORIZED, format!("unauthorized: {detail}"))
    }

    /// -32005: a job that can never succeed; a work queue moves it to its
    /// dead-letter queue at once instead of retrying.
    pub fn permanent(detail: impl fmt::Display) -> Self {
        Self::new(code::PERMANENT, format!("permanent failure: {detail}"))
    }

    /// True for errors that another attempt may cure (timeouts, unavailability).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            code::TIMEOUT | code::UNAVAILABLE | code::OVERLOADED
        )
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Timeout => RpcError::timeout(&e),
            ErrorKind::TooLarge => RpcError::new(code::TOO_LARGE, e.to_string()),
            ErrorKind::Protocol => RpcError::invalid_request(&e),
            ErrorKind::Unauthorized => RpcError::unauthorized(&e),
            _ => RpcError::unavailable(&e),
        }
    }
}

/// What kind of bus failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bus could not be reached, or a peer went away.
    Unavailable,
    /// A bounded wait ran out.
    Timeout,
    /// The transport was closed.
    Closed,
    /// A message broke the wire protocol.
    Protocol,
    /// A message was over the size limit.
    TooLarge,
    /// Bad configuration, address or argument.
    Config,
    /// A value could not be encoded or decoded.
    Codec,
    /// Operating system I/O.
    Io,
    /// The bus refused: no credential, a wrong one, or not its to do.
    Unauthorized,
}

/// A failure of the bus or of local set-up, as opposed to a method's reply.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Wraps a lower-level cause.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::with_source(ErrorKind::Io, e.to_string(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_params_names_the_field() {
        let e = RpcError::invalid_params("times", "invalid type: string \"x\", expected u32");
        assert_eq!(e.code, -32602);
        assert_eq!(e.data.unwrap()["path"], "times");
        assert!(e.message.contains("params.times"));
    }

    #[test]
    fn display_shows_code() {
        assert_eq!(
            RpcError::method_not_found("a.b").to_string(),
            "method not found: a.b (-32601)"
        );
    }

    #[test]
    fn bus_errors_map_to_codes() {
        let e: RpcError = Error::new(ErrorKind::Timeout, "late").into();
        assert_eq!(e.code, code::TIMEOUT);
        assert!(e.is_retryable());
    }
}
