//! The header's JSON, written and read without serde on the common path.
//!
//! Why by hand: every call encodes two headers and decodes two, and with
//! serde's derive that was 13,000 of the 119,000 instructions of a whole
//! call over ZeroMQ (callgrind, `examples/percall_zmq.rs`): a decode cost
//! about 4,000 (a field-name match per member, an `Option` visitor per
//! value), an encode about 2,500. The bytes are the same as serde's
//! (members in declaration order, absent ones left out, strings escaped
//! by `serde_json` whenever they need it), and [`read`] takes only the
//! shape [`write`] produces: anything else (white space, escapes, `null`,
//! an unknown or repeated member, a number serde would refuse) is left to
//! serde, so what a header means does not depend on which path read it.
//! The tests hold both paths to the same answers.

use super::{Header, Kind};

/// Appends `header` as JSON, byte for byte what `serde_json::to_writer`
/// writes for it.
pub(super) fn write(header: &Header, out: &mut Vec<u8>) {
    out.push(b'{');
    if !header.id.is_empty() {
        out.extend_from_slice(b"\"id\":");
        string(out, &header.id);
        out.push(b',');
    }
    out.extend_from_slice(b"\"kind\":\"");
    out.extend_from_slice(kind_name(header.kind).as_bytes());
    out.push(b'"');
    let strings = [
        ("service", &header.service),
        ("method", &header.method),
        ("topic", &header.topic),
        ("transaction", &header.transaction),
    ];
    members(out, &strings);
    number(out, "deadline_ms", header.deadline_ms);
    members(out, &[("content_type", &header.content_type)]);
    number(out, "seq", header.seq);
    members(
        out,
        &[
            ("publisher", &header.publisher),
            ("instance", &header.instance),
            ("auth", &header.auth),
        ],
    );
    number(out, "count", header.count.map(u64::from));
    members(
        out,
        &[
            ("traceparent", &header.traceparent),
            ("tracestate", &header.tracestate),
            ("caller", &header.caller),
        ],
    );
    out.push(b'}');
}

/// Every kind, for reading a name back.
const KINDS: [Kind; 6] = [
    Kind::Request,
    Kind::Reply,
    Kind::Event,
    Kind::Job,
    Kind::State,
    Kind::Control,
];

/// A kind's name on the wire (serde's `rename_all = "lowercase"`).
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Request => "request",
        Kind::Reply => "reply",
        Kind::Event => "event",
        Kind::Job => "job",
        Kind::State => "state",
        Kind::Control => "control",
    }
}

fn members(out: &mut Vec<u8>, members: &[(&str, &Option<String>)]) {
    for (name, value) in members {
        if let Some(value) = value {
            key(out, name);
            string(out, value);
        }
    }
}

fn number(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(n) = value {
        key(out, name);
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string: as it is when nothing in it needs escaping (names and
/// ids never do), else escaped by `serde_json`.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(needs_escape) {
        // Writing a `&str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// What `serde_json` escapes in a string, and refuses raw when it reads.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Reads a header written as [`write`] writes one; `None` for any other
/// shape (which serde then reads, or refuses with its own error).
pub(super) fn read(bytes: &[u8]) -> Option<Header> {
    // Validated whole, once: a value between two ASCII quotes is then
    // valid UTF-8 too.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    r.eat(b'{')?;
    let mut header = Header::new(Kind::Request);
    let mut seen = 0u32;
    loop {
        let name = r.string()?;
        r.eat(b':')?;
        let bit = match name {
            "id" => {
                r.string()?.clone_into(&mut header.id);
                1
            }
            "kind" => {
                header.kind = kind_of(r.string()?)?;
                1 << 1
            }
            "service" => r.fill(&mut header.service, 1 << 2)?,
            "method" => r.fill(&mut header.method, 1 << 3)?,
            "topic" => r.fill(&mut header.topic, 1 << 4)?,
            "transaction" => r.fill(&mut header.transaction, 1 << 5)?,
            "deadline_ms" => {
                header.deadline_ms = Some(r.number()?);
                1 << 6
            }
            "content_type" => r.fill(&mut header.content_type, 1 << 7)?,
            "seq" => {
                header.seq = Some(r.number()?);
                1 << 8
            }
            "publisher" => r.fill(&mut header.publisher, 1 << 9)?,
            "instance" => r.fill(&mut header.instance, 1 << 10)?,
            "auth" => r.fill(&mut header.auth, 1 << 11)?,
            "count" => {
                header.count = Some(u32::try_from(r.number()?).ok()?);
                1 << 12
            }
            "traceparent" => r.fill(&mut header.traceparent, 1 << 13)?,
            "tracestate" => r.fill(&mut header.tracestate, 1 << 14)?,
            "caller" => r.fill(&mut header.caller, 1 << 15)?,
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match r.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    // `kind` is the one member a header must have.
    (r.at == r.bytes.len() && seen & (1 << 1) != 0).then_some(header)
}

fn kind_of(name: &str) -> Option<Kind> {
    KINDS.into_iter().find(|&kind| kind_name(kind) == name)
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string with nothing escaped in it.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let len = rest.iter().position(|&b| needs_escape(b))?;
        if rest[len] != b'"' {
            return None;
        }
        // Between two ASCII quotes of valid UTF-8: char boundaries, so
        // the slice is checked in O(1), not scanned again.
        let s = self.text.get(self.at..self.at + len)?;
        self.at += len + 1;
        Some(s)
    }

    /// A string member: `slot` filled, `bit` returned.
    fn fill(&mut self, slot: &mut Option<String>, bit: u32) -> Option<u32> {
        *slot = Some(self.string()?.to_owned());
        Some(bit)
    }

    /// An unsigned integer as serde reads one: digits, no leading zero
    /// unless it is the only one, within `u64`.
    fn number(&mut self) -> Option<u64> {
        let rest = &self.bytes[self.at..];
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || (len > 1 && rest[0] == b'0') {
            return None;
        }
        let mut n = 0u64;
        for &d in &rest[..len] {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.at += len;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_bytes(h: &Header) -> Vec<u8> {
        serde_json::to_vec(h).expect("a header always encodes")
    }

    fn written(h: &Header) -> Vec<u8> {
        let mut out = Vec::new();
        write(h, &mut out);
        out
    }

    fn full() -> Header {
        Header {
            id: "c1-7".into(),
            kind: Kind::Event,
            service: Some("echo".into()),
            method: Some("shout".into()),
            topic: Some("a.b".into()),
            transaction: Some("t-1".into()),
            deadline_ms: Some(5_000),
            content_type: Some("application/msgpack".into()),
            seq: Some(u64::MAX),
            publisher: Some("p".into()),
            instance: Some("echo-1".into()),
            auth: Some("k 00ff".into()),
            count: Some(u32::MAX),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("a=b,c=d".into()),
            caller: Some("c1/7".into()),
        }
    }

    #[test]
    fn writes_what_serde_writes() {
        for h in [
            Header::new(Kind::Reply),
            Header::request("1", "bench", "echo"),
            full(),
        ] {
            assert_eq!(written(&h), serde_bytes(&h));
            assert_eq!(read(&written(&h)), Some(h));
        }
    }

    #[test]
    fn leaves_other_shapes_to_serde() {
        for text in [
            r#"{ "kind":"reply"}"#,
            r#"{"kind":"reply" }"#,
            r#"{"kind":"reply"} "#,
            r#"{"id":"a\"b","kind":"reply"}"#,
            r#"{"kind":"reply","service":null}"#,
            r#"{"kind":"reply","other":1}"#,
            r#"{"kind":"reply","kind":"event"}"#,
            r#"{"kind":"reply","deadline_ms":007}"#,
            r#"{"kind":"reply","deadline_ms":5.0}"#,
            r#"{"kind":"reply","deadline_ms":18446744073709551616}"#,
            r#"{"kind":"reply","count":4294967296}"#,
            r#"{"kind":"nope"}"#,
            r#"{"id":"x"}"#,
            r#"{}"#,
            "{\"kind\":\"reply\",\"id\":\"a\tb\"}",
            r#"{"kind":"reply""#,
        ] {
            assert_eq!(read(text.as_bytes()), None, "{text}");
        }
        assert_eq!(read(b"{\"kind\":\"reply\",\"id\":\"\xff\"}"), None);
    }

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        // Names, and strings that need escaping or are not ASCII.
        proptest::option::of(prop_oneof![
            "[a-z0-9./-]{0,12}",
            any::<String>().prop_map(|s| s.chars().take(12).collect()),
        ])
    }

    fn header() -> impl Strategy<Value = Header> {
        (
            (
                "[a-z0-9-]{0,8}",
                prop_oneof![
                    Just(Kind::Request),
                    Just(Kind::Reply),
                    Just(Kind::Event),
                    Just(Kind::Job),
                    Just(Kind::State),
                    Just(Kind::Control),
                ],
                opt_string(),
                opt_string(),
                opt_string(),
                opt_string(),
                proptest::option::of(any::<u64>()),
                opt_string(),
            ),
            (
                proptest::option::of(any::<u64>()),
                opt_string(),
                opt_string(),
                opt_string(),
                proptest::option::of(any::<u32>()),
                opt_string(),
                opt_string(),
                opt_string(),
            ),
        )
            .prop_map(
                |((id, kind, s, m, t, tx, d, ct), (seq, p, i, a, c, tp, ts, cl))| Header {
                    id,
                    kind,
                    service: s,
                    method: m,
                    topic: t,
                    transaction: tx,
                    deadline_ms: d,
                    content_type: ct,
                    seq,
                    publisher: p,
                    instance: i,
                    auth: a,
                    count: c,
                    traceparent: tp,
                    tracestate: ts,
                    caller: cl,
                },
            )
    }

    proptest! {
        #[test]
        fn both_paths_agree_on_any_header(h in header()) {
            let bytes = serde_bytes(&h);
            prop_assert_eq!(&written(&h), &bytes);
            if let Some(fast) = read(&bytes) {
                prop_assert_eq!(fast, h);
            }
        }

        #[test]
        fn what_the_fast_path_reads_serde_reads_the_same(h in header(), cut in 0usize..200, junk in any::<u8>()) {
            // Damaged headers: cut short, or one byte changed.
            let mut bytes = serde_bytes(&h);
            if cut < bytes.len() {
                if junk % 2 == 0 {
                    bytes.truncate(cut);
                } else {
                    bytes[cut] = junk;
                }
            }
            if let Some(fast) = read(&bytes) {
                let slow: Header = serde_json::from_slice(&bytes).expect("serde reads it too");
                prop_assert_eq!(fast, slow);
            }
        }
    }
}
