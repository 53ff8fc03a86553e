//! The header decoder and the salvage of a refused header's id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_core::wire::{MAX_HEADER_SIZE, decode_header, encode_header, salvage_header};

fuzz_target!(|bytes: &[u8]| {
    match decode_header(bytes) {
        Ok(h) => {
            assert!(bytes.len() <= MAX_HEADER_SIZE);
            // What decodes encodes and decodes to itself.
            assert_eq!(decode_header(&encode_header(&h)).expect("re-decodes"), h);
        }
        Err(_) => {
            if let Some(h) = salvage_header(bytes) {
                assert!(!h.id.is_empty() && h.id.len() <= 256);
            }
        }
    }
});
