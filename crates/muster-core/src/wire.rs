//! The wire protocol (see `docs/protocol.md`): frames, header, JSON-RPC
//! bodies and content types. Transports use this module and never build
//! frames by hand.

mod codec;
mod envelope;
mod header;
mod header_json;
pub mod jsonrpc;
mod jsonrpc_json;
mod trace;

pub use codec::ContentType;
pub use envelope::{
    Envelope, WireError, check_tag, decode_events, decode_header, encode_events, encode_header,
    salvage_header, same_event_header,
};
pub use header::{Header, Kind};
pub use trace::{HexId, TraceContext};

/// The first frame of every muster message: protocol name and version.
pub const PROTOCOL_TAG: &[u8] = b"MUSTER/1";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default upper bound on one message (all frames), 8 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;

/// Largest header frame accepted, 16 KiB. Headers hold names and ids;
/// the bound is checked before parsing, so a huge header costs nothing.
pub const MAX_HEADER_SIZE: usize = 16 * 1024;

/// Most events one event message may pack (muster publishers pack at most
/// 128). With [`MAX_HEADER_SIZE`] this bounds what decoding one message
/// allocates, whatever its header says.
pub const MAX_EVENTS_PER_MESSAGE: usize = 1024;
