//! The wire protocol (see `docs/protocol.md`): frames, header, JSON-RPC
//! bodies and content types. Transports use this module and never build
//! frames by hand.

mod codec;
mod envelope;
mod header;
pub mod jsonrpc;

pub use codec::ContentType;
pub use envelope::{
    Envelope, WireError, check_tag, decode_events, decode_header, encode_events, encode_header,
    same_event_header,
};
pub use header::{Header, Kind};

/// The first frame of every muster message: protocol name and version.
pub const PROTOCOL_TAG: &[u8] = b"MUSTER/1";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default upper bound on one message (all frames), 8 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;
