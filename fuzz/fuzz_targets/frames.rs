//! The envelope decoders: `[tag, header, body]` frames (ZeroMQ) and the
//! one-buffer form (Redis). Any input is an error or an envelope, never a
//! panic; a decoded envelope encodes and decodes to itself.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use muster_core::wire::Envelope;

fuzz_target!(|input: (Vec<Vec<u8>>, Vec<u8>, bool)| {
    let (frames, blob, tagged) = input;
    let mut frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
    if tagged && !frames.is_empty() {
        frames[0] = Bytes::from_static(muster_core::wire::PROTOCOL_TAG);
    }
    if let Ok(env) = Envelope::from_frames(&frames) {
        let again = Envelope::from_frames(&env.to_frames()).expect("re-decodes");
        assert_eq!(again, env);
    }
    let mut blob = blob;
    if tagged {
        let mut t = b"MUSTER/1\n".to_vec();
        t.extend_from_slice(&blob);
        blob = t;
    }
    let _ = Envelope::from_blob(&blob);
});
