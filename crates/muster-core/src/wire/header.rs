use serde::{Deserialize, Serialize};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An RPC call.
    Request,
    /// The answer to a request (result or error).
    Reply,
    /// A published event.
    Event,
    /// A work-queue job.
    Job,
    /// A replicated-state change or snapshot.
    State,
    /// Bus and host control (registry, heartbeats).
    Control,
}

/// The JSON header frame of a message. Absent optional members are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Correlation id of a request and its reply; unique per caller.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// What the message is.
    pub kind: Kind,
    /// Target service of a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Target method of a request, or the control verb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Topic of an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Transaction (context instance) the message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// Milliseconds the caller will wait, counted from when it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// `application/json` when absent, or `application/msgpack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Events: the publisher's number of the first body under this
    /// header, counted per topic from 0 (the next bodies follow on). A
    /// subscriber that sees a number jump knows how many it missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Events: the publisher's random id, which scopes `seq`. A decoded
    /// batch carries it (and the run's length in `count`) on the first
    /// event of each run of numbered events only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// Instance that must answer (requests) or that answered (replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Registry verbs: `<key id> <hex MAC>`, the credential's proof
    /// (`docs/security.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Events: how many body frames follow this header and share it
    /// (batches on ZeroMQ); absent means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Requests: the W3C `traceparent` of the span that sent it (the
    /// trace and the caller's span; `TraceContext`, `docs/tracing.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Requests: the W3C `tracestate` that came with `traceparent`,
    /// passed on unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Requests: `<caller>/<n>`, the caller's id and its call's number,
    /// unique on the bus: the key a cancel notice names when the caller
    /// gives up (`docs/tracing.md`, "Cancellation").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl Header {
    /// An empty header of `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            id: String::new(),
            kind,
            service: None,
            method: None,
            topic: None,
            transaction: None,
            deadline_ms: None,
            content_type: None,
            seq: None,
            publisher: None,
            auth: None,
            instance: None,
            count: None,
            traceparent: None,
            tracestate: None,
            caller: None,
        }
    }

    /// A request header for `service.method`.
    pub fn request(id: impl Into<String>, service: &str, method: &str) -> Self {
        let mut h = Self::new(Kind::Request);
        h.id = id.into();
        h.service = Some(service.to_owned());
        h.method = Some(method.to_owned());
        h
    }

    /// The reply header for a request header, echoing id and content type.
    pub fn reply_to(request: &Header) -> Self {
        let mut h = Self::new(Kind::Reply);
        h.id.clone_from(&request.id);
        h.content_type.clone_from(&request.content_type);
        h
    }

    /// Sets the topic.
    #[must_use]
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets the transaction.
    #[must_use]
    pub fn with_transaction(mut self, transaction: Option<String>) -> Self {
        self.transaction = transaction;
        self
    }

    /// `service.method` of a request, for messages and logs.
    pub fn target(&self) -> String {
        format!(
            "{}.{}",
            self.service.as_deref().unwrap_or(""),
            self.method.as_deref().unwrap_or("")
        )
    }
}
