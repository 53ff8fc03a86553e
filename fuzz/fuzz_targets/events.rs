//! The event-batch decoder: `[topic, tag, header, body, ...]` with shared
//! headers and counts. Never panics, and never allocates past the bounds
//! the protocol sets (libFuzzer's `-rss_limit_mb` catches a blow-up).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use muster_core::wire::{MAX_EVENTS_PER_MESSAGE, PROTOCOL_TAG, decode_events};

fuzz_target!(|input: (Vec<u8>, Vec<Vec<u8>>, u16)| {
    let (topic, rest, empties) = input;
    let mut frames = vec![Bytes::from(topic), Bytes::from_static(PROTOCOL_TAG)];
    frames.extend(rest.into_iter().map(Bytes::from));
    // Many empty bodies: the shape of the shared-header attack.
    frames.extend(std::iter::repeat_n(Bytes::new(), usize::from(empties % 2048)));
    if let Ok(events) = decode_events(&frames) {
        assert!(events.len() <= MAX_EVENTS_PER_MESSAGE);
    }
});
