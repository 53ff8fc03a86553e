use bytes::Bytes;

use super::{Header, MAX_EVENTS_PER_MESSAGE, MAX_HEADER_SIZE, PROTOCOL_TAG};

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer frames than a message needs.
    #[error("expected at least {expected} frames, got {got}")]
    Frames {
        /// Frames needed.
        expected: usize,
        /// Frames present.
        got: usize,
    },
    /// The first frame is not a muster protocol tag.
    #[error("not a muster message (first frame is not MUSTER/<version>)")]
    NotMuster,
    /// A muster tag of a version this build does not speak.
    #[error("unsupported protocol version {0:?} (this side speaks MUSTER/1)")]
    Version(String),
    /// The header frame is not a valid header.
    #[error("bad header: {0}")]
    Header(String),
    /// The header frame is over [`MAX_HEADER_SIZE`]: refused before it
    /// is parsed (an event batch copies its header into every event).
    #[error("header of {size} bytes is over the limit of {limit}")]
    HeaderTooLarge {
        /// Size of the header frame.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An event message packs more events than [`MAX_EVENTS_PER_MESSAGE`].
    #[error("{count} events in one message is over the limit of {limit}")]
    TooManyEvents {
        /// Events the message says it holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The body could not be encoded or decoded.
    #[error("bad body: {0}")]
    Body(String),
    /// Unknown `content_type`.
    #[error("unsupported content type {0:?}")]
    ContentType(String),
    /// The message is over the size limit.
    #[error("message of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
}

/// One muster message: a header and a body.
///
/// On ZeroMQ it travels as the frames `[MUSTER/1, header JSON, body]`
/// (events are prefixed with their topic frame, see `docs/protocol.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The parsed header.
    pub header: Box<Header>,
    /// The payload bytes, encoded as `header.content_type` says.
    pub body: Bytes,
}

impl Envelope {
    /// A message from a header and a body.
    pub fn new(header: Header, body: impl Into<Bytes>) -> Self {
        Self {
            header: Box::new(header),
            body: body.into(),
        }
    }

    /// The three frames `[tag, header, body]`.
    pub fn to_frames(&self) -> [Bytes; 3] {
        [
            Bytes::from_static(PROTOCOL_TAG),
            Bytes::from(encode_header(&self.header)),
            self.body.clone(),
        ]
    }

    /// Reads `[tag, header, body]`.
    ///
    /// # Errors
    /// A [`WireError`] naming what is wrong; never panics on any input.
    pub fn from_frames(frames: &[Bytes]) -> Result<Self, WireError> {
        if frames.len() < 3 {
            return Err(WireError::Frames {
                expected: 3,
                got: frames.len(),
            });
        }
        Self::from_parts(&frames[0], &frames[1], frames[2].clone())
    }

    /// Reads a message's three parts, the tag and the header borrowed:
    /// a transport that holds them in its own buffers makes no `Bytes`
    /// of them (two allocations per message on ZeroMQ, whose small parts
    /// are stored inline).
    ///
    /// # Errors
    /// As [`Envelope::from_frames`].
    pub fn from_parts(tag: &[u8], header: &[u8], body: Bytes) -> Result<Self, WireError> {
        check_tag(tag)?;
        Ok(Self {
            header: Box::new(decode_header(header)?),
            body,
        })
    }
}

impl Envelope {
    /// One buffer for buses that carry a message as a single value (Redis):
    /// `MUSTER/1 \n header JSON \n body`. The header JSON holds no raw
    /// newline, so the first two newlines split it.
    pub fn to_blob(&self) -> Vec<u8> {
        // The header is written in place, not into a buffer of its own
        // and copied (one allocation per message, not two).
        let mut out = Vec::with_capacity(PROTOCOL_TAG.len() + HEADER_ROOM + self.body.len() + 2);
        out.extend_from_slice(PROTOCOL_TAG);
        out.push(b'\n');
        super::header_json::write(&self.header, &mut out);
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`Envelope::to_blob`]'s format.
    ///
    /// # Errors
    /// A [`WireError`]; never panics on any input.
    pub fn from_blob(blob: &[u8]) -> Result<Self, WireError> {
        let (header, at) = read_blob(blob)?;
        Ok(Self {
            header: Box::new(header),
            body: Bytes::copy_from_slice(&blob[at..]),
        })
    }

    /// [`Envelope::from_blob`] for a blob already in [`Bytes`]: the body
    /// is a slice of it, not a copy.
    ///
    /// # Errors
    /// A [`WireError`]; never panics on any input.
    pub fn from_blob_bytes(blob: &Bytes) -> Result<Self, WireError> {
        let (header, at) = read_blob(blob)?;
        Ok(Self {
            header: Box::new(header),
            body: blob.slice(at..),
        })
    }

    /// The header of a blob in [`Envelope::to_blob`]'s format, unread:
    /// what is left to salvage an id from when the blob cannot be read.
    pub fn blob_header(blob: &[u8]) -> Option<&[u8]> {
        let (tag_end, header_end) = blob_line_breaks(blob)?;
        Some(&blob[tag_end + 1..header_end])
    }

    /// True when `bytes` starts as [`Envelope::to_blob`]'s format does
    /// (the protocol tag and a newline), whatever follows.
    pub fn looks_like_blob(bytes: &[u8]) -> bool {
        bytes.len() > PROTOCOL_TAG.len()
            && bytes.starts_with(PROTOCOL_TAG)
            && bytes[PROTOCOL_TAG.len()] == b'\n'
    }
}

/// Room for a request's header (ids, names, deadline, caller key) in a
/// buffer it is written into: a buffer that grows copies what it holds.
const HEADER_ROOM: usize = 256;

/// Where a blob's first two line breaks are (after the tag, after the
/// header). memchr, not a byte loop: a tenth of the instructions of
/// reading a call's blob went to finding them.
fn blob_line_breaks(blob: &[u8]) -> Option<(usize, usize)> {
    let tag_end = memchr::memchr(b'\n', blob)?;
    let len = memchr::memchr(b'\n', &blob[tag_end + 1..])?;
    Some((tag_end, tag_end + 1 + len))
}

/// The header of a blob and where its body starts.
fn read_blob(blob: &[u8]) -> Result<(Header, usize), WireError> {
    let Some((tag_end, header_end)) = blob_line_breaks(blob) else {
        return Err(WireError::Frames {
            expected: 3,
            got: memchr::memchr_iter(b'\n', blob).count() + 1,
        });
    };
    check_tag(&blob[..tag_end])?;
    Ok((
        decode_header(&blob[tag_end + 1..header_end])?,
        header_end + 1,
    ))
}

/// Frames of a batch of events on one topic, for prefix-filtering buses
/// (every event is delivered on `topic`, whatever its header says):
/// `[topic, tag, header, body, body, ..., header, body, ...]`. Consecutive
/// events whose headers are equal share one header whose `count` says how
/// many bodies follow it. A batch of one is `[topic, tag, header, body]`.
///
/// With `numbering = Some((publisher, first))`, each header carries the
/// publisher's id and the number of its first body (`seq`): the events
/// are numbers `first`, `first + 1`, ... of this publisher on `topic`.
pub fn encode_events<'a>(
    topic: &str,
    events: impl IntoIterator<Item = &'a Envelope>,
    numbering: Option<(&str, u64)>,
) -> Vec<Bytes> {
    let mut frames = vec![
        Bytes::copy_from_slice(topic.as_bytes()),
        Bytes::from_static(PROTOCOL_TAG),
    ];
    // Runs of events that can share a header: (header, bodies).
    let mut runs: Vec<(&Header, Vec<Bytes>)> = Vec::new();
    for e in events {
        match runs.last_mut() {
            Some((h, bodies)) if same_event_header(h, &e.header) => bodies.push(e.body.clone()),
            _ => runs.push((&e.header, vec![e.body.clone()])),
        }
    }
    let mut next = numbering.map(|(_, first)| first);
    for (header, bodies) in runs {
        let encoded = if bodies.len() == 1 && next.is_none() {
            encode_header(header)
        } else {
            let mut h = header.clone();
            if bodies.len() > 1 {
                h.count = Some(u32::try_from(bodies.len()).unwrap_or(u32::MAX));
            }
            if let (Some((publisher, _)), Some(n)) = (numbering, next) {
                h.publisher = Some(publisher.to_owned());
                h.seq = Some(n);
                next = Some(n + bodies.len() as u64);
            }
            encode_header(&h)
        };
        frames.push(Bytes::from(encoded));
        frames.extend(bodies);
    }
    frames
}

/// True when two events of one batch can share one header frame. The
/// topic is not compared (every event of a batch is on the batch's
/// topic), nor the numbering the batch itself adds.
pub fn same_event_header(a: &Header, b: &Header) -> bool {
    a.kind == b.kind
        && a.transaction == b.transaction
        && a.content_type == b.content_type
        && a.id == b.id
        && a.service == b.service
        && a.method == b.method
        && a.instance == b.instance
        && a.deadline_ms == b.deadline_ms
}

/// Reads the frames written by [`encode_events`]. Each event's header gets
/// the topic of the batch and, when numbered, its own number.
///
/// Memory is bounded before anything is copied: a header frame is at most
/// [`MAX_HEADER_SIZE`] and a message at most [`MAX_EVENTS_PER_MESSAGE`]
/// events, so the copies of shared headers stay within 16 MiB.
///
/// # Errors
/// A [`WireError`] for a malformed batch; never panics on any input.
pub fn decode_events(frames: &[Bytes]) -> Result<Vec<Envelope>, WireError> {
    if frames.len() < 4 {
        return Err(WireError::Frames {
            expected: 4,
            got: frames.len(),
        });
    }
    check_tag(&frames[1])?;
    let topic = std::str::from_utf8(&frames[0])
        .map_err(|_| WireError::Header("topic is not UTF-8".into()))?;
    // Every body frame is one event at most (headers take frames too).
    let bodies = frames.len() - 3;
    if bodies > MAX_EVENTS_PER_MESSAGE {
        return Err(WireError::TooManyEvents {
            count: bodies,
            limit: MAX_EVENTS_PER_MESSAGE,
        });
    }
    let mut out = Vec::with_capacity(bodies);
    let mut i = 2;
    while i < frames.len() {
        let mut header = decode_header(&frames[i])?;
        let count = header.count.take().unwrap_or(1) as usize;
        if count == 0 || frames.len() - i - 1 < count {
            return Err(WireError::Frames {
                expected: i + 1 + count.max(1),
                got: frames.len(),
            });
        }
        if header.topic.as_deref() != Some(topic) {
            header.topic = Some(topic.to_owned());
        }
        // The first event of a run carries the run's numbering (publisher,
        // first number, length); the others only their own number, so a
        // batch does not copy the publisher's id into every event.
        let first = header.seq;
        let mut rest = header.clone();
        rest.publisher = None;
        if first.is_some() && count > 1 {
            header.count = u32::try_from(count).ok();
        }
        for (k, body) in frames[i + 1..=i + count].iter().enumerate() {
            let mut h = if k == 0 { header.clone() } else { rest.clone() };
            h.seq = first.map(|n| n.wrapping_add(k as u64));
            out.push(Envelope {
                header: Box::new(h),
                body: body.clone(),
            });
        }
        i += 1 + count;
    }
    Ok(out)
}

/// Checks a protocol tag frame.
///
/// # Errors
/// [`WireError::Version`] for another `MUSTER/n`, [`WireError::NotMuster`] otherwise.
pub fn check_tag(tag: &[u8]) -> Result<(), WireError> {
    if tag == PROTOCOL_TAG {
        return Ok(());
    }
    match tag.strip_prefix(b"MUSTER/") {
        Some(v) => Err(WireError::Version(String::from_utf8_lossy(v).into_owned())),
        None => Err(WireError::NotMuster),
    }
}

/// Serializes a header (the bytes `serde_json` would write for it).
/// Headers only hold strings and integers, so this cannot fail.
pub fn encode_header(header: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_ROOM);
    super::header_json::write(header, &mut out);
    out
}

/// Parses a header frame.
///
/// # Errors
/// [`WireError::HeaderTooLarge`] over [`MAX_HEADER_SIZE`] (nothing is
/// parsed), [`WireError::Header`] when it is not a JSON header object.
pub fn decode_header(bytes: &[u8]) -> Result<Header, WireError> {
    if bytes.len() > MAX_HEADER_SIZE {
        return Err(WireError::HeaderTooLarge {
            size: bytes.len(),
            limit: MAX_HEADER_SIZE,
        });
    }
    match super::header_json::read(bytes) {
        Some(header) => Ok(header),
        None => serde_json::from_slice(bytes).map_err(|e| WireError::Header(e.to_string())),
    }
}

/// What can be read of a header frame that [`decode_header`] refused, so
/// that its sender still gets an error reply it can match: the `id` and
/// `content_type` members when they are strings. `None` when not even
/// that can be read (not JSON, over the size limit, no string `id`).
pub fn salvage_header(bytes: &[u8]) -> Option<Header> {
    if bytes.len() > MAX_HEADER_SIZE {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = value.get("id")?.as_str()?;
    if id.is_empty() || id.len() > 256 {
        return None;
    }
    let mut header = Header::new(super::Kind::Request);
    id.clone_into(&mut header.id);
    header.content_type = value
        .get("content_type")
        .and_then(|c| c.as_str())
        .filter(|c| super::ContentType::from_header(Some(c)).is_ok())
        .map(str::to_owned);
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Kind;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut h = Header::request("a-1", "echo", "shout");
        h.deadline_ms = Some(5000);
        let env = Envelope::new(h, r#"{"jsonrpc":"2.0"}"#);
        assert_eq!(Envelope::from_frames(&env.to_frames()).unwrap(), env);
    }

    #[test]
    fn wrong_version_is_named() {
        let frames = [
            Bytes::from_static(b"MUSTER/9"),
            Bytes::from_static(b"{\"kind\":\"event\"}"),
            Bytes::new(),
        ];
        assert_eq!(
            Envelope::from_frames(&frames),
            Err(WireError::Version("9".into()))
        );
    }

    #[test]
    fn unknown_kind_is_a_header_error() {
        let frames = [
            Bytes::from_static(PROTOCOL_TAG),
            Bytes::from_static(b"{\"kind\":\"nope\"}"),
            Bytes::new(),
        ];
        assert!(matches!(
            Envelope::from_frames(&frames),
            Err(WireError::Header(_))
        ));
    }

    #[test]
    fn minimal_header() {
        let h =
            decode_header(br#"{"kind":"request","service":"a","method":"b","id":"1"}"#).unwrap();
        assert_eq!(h.kind, Kind::Request);
        assert_eq!(h.target(), "a.b");
    }

    #[test]
    fn a_blob_in_bytes_reads_as_a_copied_one_and_keeps_line_breaks_in_its_body() {
        let e = Envelope::new(Header::request("r1", "svc", "m"), "line one\nline two\n");
        let blob = Bytes::from(e.to_blob());
        assert!(Envelope::looks_like_blob(&blob));
        assert_eq!(Envelope::from_blob_bytes(&blob).unwrap(), e);
        assert_eq!(Envelope::from_blob(&blob).unwrap(), e);
        assert!(!Envelope::looks_like_blob(b"MUSTER/1"));
        assert!(!Envelope::looks_like_blob(b"{\"a\":1}"));
        assert!(Envelope::from_blob_bytes(&Bytes::from_static(b"MUSTER/1\n{}")).is_err());
    }

    #[test]
    fn event_batches_round_trip() {
        let a = Envelope::new(Header::new(Kind::Event).with_topic("t.a"), "1");
        let b = Envelope::new(Header::new(Kind::Event).with_topic("t.a"), "2");
        let mut c = Envelope::new(Header::new(Kind::Event).with_topic("t.a"), "3");
        c.header.transaction = Some("T1".into());
        for e in [&a, &b, &c] {
            assert_eq!(&Envelope::from_blob(&e.to_blob()).unwrap(), e);
        }
        let frames = encode_events("t.a", [&a, &b, &c], None);
        // a and b share one header; c has its own.
        assert_eq!(frames.len(), 2 + 1 + 2 + 1 + 1);
        assert_eq!(decode_events(&frames).unwrap(), vec![a, b, c]);
        assert!(decode_events(&frames[..3]).is_err());
        assert!(
            decode_events(&frames[..4]).is_err(),
            "count says two bodies follow"
        );
    }

    #[test]
    fn numbered_batches_number_every_event() {
        let e = |body: &'static str| Envelope::new(Header::new(Kind::Event).with_topic("t"), body);
        let (a, b) = (e("1"), e("2"));
        let mut c = e("3");
        c.header.transaction = Some("T".into());
        let frames = encode_events("t", [&a, &b, &c], Some(("P1", 7)));
        let got = decode_events(&frames).unwrap();
        let numbers: Vec<_> = got.iter().map(|e| e.header.seq).collect();
        assert_eq!(numbers, [Some(7), Some(8), Some(9)]);
        // Each run's first event says whose numbers they are, and how many.
        let runs: Vec<_> = got
            .iter()
            .map(|e| (e.header.publisher.as_deref(), e.header.count))
            .collect();
        assert_eq!(
            runs,
            [(Some("P1"), Some(2)), (None, None), (Some("P1"), None)]
        );
    }

    #[test]
    fn a_large_header_is_refused_before_it_is_copied() {
        // A shared header of 1 MiB over 10,000 empty bodies would be 10 GB
        // of copies: refused by size, then by the event count.
        let big = format!(
            r#"{{"kind":"event","transaction":"{}","count":10}}"#,
            "x".repeat(1 << 20)
        );
        let mut frames = vec![
            Bytes::from_static(b"t"),
            Bytes::from_static(PROTOCOL_TAG),
            Bytes::from(big),
        ];
        frames.extend(std::iter::repeat_n(Bytes::new(), 10));
        assert!(matches!(
            decode_events(&frames),
            Err(WireError::HeaderTooLarge { .. })
        ));
        let mut frames = vec![
            Bytes::from_static(b"t"),
            Bytes::from_static(PROTOCOL_TAG),
            Bytes::from_static(br#"{"kind":"event","count":10000}"#),
        ];
        frames.extend(std::iter::repeat_n(Bytes::new(), 10_000));
        assert!(matches!(
            decode_events(&frames),
            Err(WireError::TooManyEvents { .. })
        ));
    }

    #[test]
    fn salvage_reads_the_id_of_a_header_with_bad_members() {
        for bad in [
            r#"{"kind":"request","id":"r1","deadline_ms":-5}"#,
            r#"{"kind":"request","id":"r1","count":4294967296}"#,
            r#"{"kind":"nope","id":"r1"}"#,
        ] {
            assert!(decode_header(bad.as_bytes()).is_err(), "{bad}");
            assert_eq!(salvage_header(bad.as_bytes()).unwrap().id, "r1", "{bad}");
        }
        assert!(salvage_header(b"not json").is_none());
        assert!(salvage_header(br#"{"id":7}"#).is_none());
    }

    proptest! {
        #[test]
        fn event_decoder_never_panics(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 0..8)) {
            let mut frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            let _ = decode_events(&frames);
            if frames.len() > 1 { frames[1] = Bytes::from_static(PROTOCOL_TAG); }
            let _ = decode_events(&frames);
        }

        #[test]
        fn decoder_never_panics(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
            let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            let _ = Envelope::from_frames(&frames);
        }

        #[test]
        fn blob_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Envelope::from_blob(&bytes);
            let mut tagged = b"MUSTER/1\n".to_vec();
            tagged.extend_from_slice(&bytes);
            let _ = Envelope::from_blob(&tagged);
            let _ = Envelope::from_blob_bytes(&Bytes::from(tagged));
        }

        #[test]
        fn a_blob_splits_at_its_first_two_line_breaks(
            tag in prop_oneof![Just("MUSTER/1"), Just("MUSTER/2"), Just("x")],
            header in prop_oneof![Just(r#"{"id":"1","kind":"reply"}"#.to_owned()), "[^\n]{0,20}"],
            body in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..40),
            breaks in 0usize..3,
        ) {
            let mut blob = tag.as_bytes().to_vec();
            for (i, part) in [header.as_bytes(), &body].into_iter().enumerate() {
                if i < breaks {
                    blob.push(b'\n');
                }
                blob.extend_from_slice(part);
            }
            // What `read_blob` must do, written the plain way.
            let mut parts = blob.splitn(3, |b| *b == b'\n');
            let expected = match (parts.next(), parts.next(), parts.next()) {
                (Some(t), Some(h), Some(b)) => check_tag(t)
                    .and_then(|()| decode_header(h))
                    .map(|h| (h, b.to_vec())),
                _ => Err(WireError::Frames {
                    expected: 3,
                    got: blob.iter().filter(|b| **b == b'\n').count() + 1,
                }),
            };
            let got = Envelope::from_blob(&blob).map(|e| (*e.header, e.body.to_vec()));
            prop_assert_eq!(format!("{got:?}"), format!("{expected:?}"));
        }

        #[test]
        fn header_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_header(&bytes);
        }

        #[test]
        fn tagged_random_headers_never_panic(s in "\\PC*") {
            let frames = [Bytes::from_static(PROTOCOL_TAG), Bytes::from(s), Bytes::new()];
            let _ = Envelope::from_frames(&frames);
        }
    }
}
