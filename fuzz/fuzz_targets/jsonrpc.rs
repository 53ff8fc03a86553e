//! The JSON-RPC 2.0 body decoders, in JSON and MessagePack: requests and
//! replies. Any input is a coded error or a body, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_core::wire::ContentType;
use muster_core::wire::jsonrpc::{decode_reply, decode_request};

fuzz_target!(|bytes: &[u8]| {
    for ct in [ContentType::Json, ContentType::MsgPack] {
        if let Err(e) = decode_request(ct, bytes) {
            assert!((-32768..=-32000).contains(&e.code), "{e:?}");
        }
        let _ = decode_reply(ct, bytes);
    }
});
