//! What an instance tells the bus about itself: discovery records.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One RPC method of a service, with its JSON Schemas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// Method name (without the service prefix).
    pub name: String,
    /// JSON Schema of the params, when the handler takes `Args<T>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// JSON Schema of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Safe to send again to another instance if the first one dies.
    #[serde(default)]
    pub idempotent: bool,
}

/// A running instance of a service, as registered on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Service name.
    pub service: String,
    /// Unique id of this instance.
    pub instance: String,
    /// Version of the service binary.
    #[serde(default)]
    pub version: String,
    /// Where the instance takes requests (transport specific; empty on brokers).
    #[serde(default)]
    pub endpoint: String,
    /// Its methods.
    #[serde(default)]
    pub methods: Vec<MethodInfo>,
    /// Topic patterns it subscribes to.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Work queues it consumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// Operating-system process id.
    #[serde(default)]
    pub pid: u32,
    /// Transaction the instance runs under, when a host started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// Callers must show a bus credential (`Service::require_auth`); on the
    /// embedded bus a muster caller does so by itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_auth: bool,
    /// On the embedded bus: the instance reads a request sent as one frame
    /// (`MUSTER/1\n<header>\n<body>`, `docs/protocol.md`), which costs
    /// less to send and read than three. Callers send three frames to an
    /// instance that does not say so (an older one, or another language's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_frame: bool,
}

/// Topic on which buses without a registry of their own carry
/// [`StatusUpdate`]s (the embedded bus takes them as a registry verb).
pub const UPDATE_TOPIC: &str = "muster.update";

/// Topic on which a host says that an instance's process ended, as
/// `{"caller": INSTANCE}`: the requests it made and was still waiting for
/// are cancelled where they run (`docs/tracing.md`, "Cancellation").
pub const GONE_TOPIC: &str = "muster.gone";

/// The topic of the cancel notices for `service`'s requests, each
/// `{"key": "<caller>/<n>"}` (the request's `caller` header).
pub fn cancel_topic(service: &str) -> String {
    format!("muster.cancel.{service}")
}

/// An instance's progress report to the host that supervises it
/// (`ctx.update`): an `updated` lifecycle event, which can fire triggers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// Service name.
    pub service: String,
    /// The reporting instance.
    pub instance: String,
    /// Its transaction, when a host started it.
    #[serde(default)]
    pub transaction: Option<String>,
    /// The status, as the service gave it.
    #[serde(default)]
    pub status: Value,
}

impl InstanceInfo {
    /// True when the instance serves `method`.
    pub fn has_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.name == method)
    }

    /// The description of `method`, if served.
    pub fn method(&self, method: &str) -> Option<&MethodInfo> {
        self.methods.iter().find(|m| m.name == method)
    }
}

/// Names reserved for built-in methods that every instance answers.
pub mod builtin {
    /// `{service, instance, version, methods, ...}`.
    pub const INFO: &str = "$info";
    /// Per-method counts, errors and latencies.
    pub const STATS: &str = "$stats";
    /// Answers `"pong"`.
    pub const PING: &str = "$ping";
}

/// The reserved service the host answers control requests on. It is the
/// one service name with a dot, so no user service can take it.
pub const HOST_SERVICE: &str = "muster.host";

/// The instances among `items` that can take a request for
/// `service.method` (only `instance`, when the request names one): -32601
/// when no instance of the service is known, or none serves the method
/// (built-in `$` methods are served by every instance).
///
/// # Errors
/// The -32601 to answer with.
pub fn candidates<'a, T>(
    items: &'a [T],
    info: impl Fn(&T) -> &InstanceInfo,
    service: &str,
    method: &str,
    instance: Option<&str>,
) -> Result<Vec<&'a T>, crate::RpcError> {
    let found: Vec<&T> = items
        .iter()
        .filter(|t| info(t).service == service)
        .filter(|t| instance.is_none_or(|id| info(t).instance == id))
        .collect();
    if found.is_empty() {
        return Err(crate::RpcError::method_not_found(format!(
            "{service}.{method} (no service {service:?} is registered)"
        )));
    }
    if !method.starts_with('$') && !found.iter().any(|t| info(t).has_method(method)) {
        return Err(crate::RpcError::method_not_found(format!(
            "{service}.{method}"
        )));
    }
    Ok(found)
}

/// Checks a service name: a valid name, or the reserved [`HOST_SERVICE`].
pub fn is_valid_service_name(name: &str) -> bool {
    is_valid_name(name) || name == HOST_SERVICE
}

/// Checks a service or method name: ASCII letters, digits, `_` and `-`,
/// starting with a letter; no dots (dots separate service from method).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("echo"));
        assert!(is_valid_name("drink_coffee-2"));
        assert!(!is_valid_name("a.b"));
        assert!(is_valid_service_name("muster.host"));
        assert!(!is_valid_service_name("muster.other"));
        assert!(!is_valid_name("1x"));
        assert!(!is_valid_name(""));
    }
}
