//! Small glue between omq sockets and muster envelopes.

use bytes::Bytes;
use muster_core::wire::{self, Envelope, Header, WireError};
use muster_core::{Error, ErrorKind};
use omq_tokio::{Message, Options};

use crate::curve::Curve;

/// Socket options shared by muster's sockets: a bounded linger and a hard
/// size cap (the protocol-level limit is checked, with a clear error,
/// below it). omq's default throughput profile is kept: it is as fast as
/// the latency profile for one synchronous caller and twice as fast with
/// many calls in flight (`docs/benchmarks.md`).
pub(crate) fn options(max_message_size: usize) -> Options {
    let mut o = Options::default().linger(std::time::Duration::from_millis(500));
    o.max_message_size = Some(hard_cap(max_message_size));
    o
}

/// The socket-level cap: above the protocol limit, so that an oversize
/// request still arrives and gets a coded "too large" reply.
pub(crate) fn hard_cap(limit: usize) -> usize {
    limit.saturating_mul(2).saturating_add(64 * 1024)
}

/// Options of a socket that connects: a CURVE client when the process
/// has the fleet's keys (`curve.rs`).
pub(crate) fn connecting(max_message_size: usize, curve: Option<&Curve>) -> Options {
    let o = options(max_message_size);
    match curve {
        Some(c) => c.client_options(o),
        None => o,
    }
}

/// Options of a socket that binds: a CURVE server when the process has
/// the fleet's keys.
pub(crate) fn listening(max_message_size: usize, curve: Option<&Curve>) -> Result<Options, Error> {
    let o = options(max_message_size);
    match curve {
        Some(c) => c.server_options(o),
        None => Ok(o),
    }
}

pub(crate) fn zmq_error(context: &str, e: omq_tokio::Error) -> Error {
    let kind = match e {
        omq_tokio::Error::Timeout => ErrorKind::Timeout,
        omq_tokio::Error::Closed => ErrorKind::Closed,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("{context}: {e}"))
}

/// All frames of a message.
pub(crate) fn frames(msg: &Message) -> Vec<Bytes> {
    (0..msg.len()).filter_map(|i| msg.part_bytes(i)).collect()
}

/// How a request or a reply is framed (`docs/protocol.md`, "Messages").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `[MUSTER/1, header, body]`: what every muster peer reads.
    Three,
    /// `[MUSTER/1\n<header>\n<body>]`: to an instance that registers
    /// `one_frame`, and its replies to such requests. One part costs the
    /// socket less to send and to read than three (`docs/benchmarks.md`).
    One,
}

impl Framing {
    /// The framing of `msg`, whose muster parts start at part `skip`.
    pub(crate) fn of(msg: &Message, skip: usize) -> Self {
        if msg.len() == skip + 1 {
            Self::One
        } else {
            Self::Three
        }
    }
}

/// Reads a message whose muster parts start at part `skip`, in either
/// framing, without copying the tag and header into parts of their own
/// (the hot path of every request and reply).
pub(crate) fn envelope_at(msg: &Message, skip: usize) -> Result<Envelope, WireError> {
    if Framing::of(msg, skip) == Framing::One {
        return Envelope::from_blob_bytes(&msg.part_bytes(skip).unwrap_or_default());
    }
    let (Some(tag), Some(header), Some(body)) = (
        msg.part_slice(skip),
        msg.part_slice(skip + 1),
        msg.part_bytes(skip + 2),
    ) else {
        return Err(WireError::Frames {
            expected: 3,
            got: msg.len().saturating_sub(skip),
        });
    };
    Envelope::from_parts(tag, header, body)
}

/// `env` as one message, framed as `framing` says.
pub(crate) fn envelope_message(env: &Envelope, framing: Framing) -> Message {
    match framing {
        Framing::Three => Message::multipart(env.to_frames()),
        Framing::One => Message::single(Bytes::from(env.to_blob())),
    }
}

/// `[identity, ...]` for a ROUTER, framed as `framing` says.
pub(crate) fn routed_message(identity: Bytes, env: &Envelope, framing: Framing) -> Message {
    match framing {
        Framing::Three => {
            let [tag, header, body] = env.to_frames();
            Message::multipart([identity, tag, header, body])
        }
        Framing::One => Message::multipart([identity, Bytes::from(env.to_blob())]),
    }
}

/// Best effort: the header of a message (muster parts from `skip`, either
/// framing) that failed to decode, so the sender can still be answered
/// with an error it can match.
pub(crate) fn salvage_header(msg: &Message, skip: usize) -> Option<Header> {
    let header = match Framing::of(msg, skip) {
        Framing::Three => msg.part_slice(skip + 1)?,
        Framing::One => Envelope::blob_header(msg.part_slice(skip)?)?,
    };
    wire::decode_header(header)
        .ok()
        .or_else(|| wire::salvage_header(header))
}

/// True when the message (muster parts from `skip`) carries this
/// protocol's tag, in either framing.
pub(crate) fn has_tag(msg: &Message, skip: usize) -> bool {
    match Framing::of(msg, skip) {
        Framing::Three => msg.len() >= skip + 3 && msg.part_slice(skip) == Some(wire::PROTOCOL_TAG),
        Framing::One => msg.part_slice(skip).is_some_and(Envelope::looks_like_blob),
    }
}

/// Logs a dropped message at debug level: undecodable input must neither
/// crash nor flood the log.
pub(crate) fn log_dropped(what: &str, e: &WireError) {
    tracing::debug!(error = %e, "dropped undecodable {what}");
}
