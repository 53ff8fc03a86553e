//! W3C trace context (`traceparent`): the trace a message belongs to and
//! the span that sent it, carried in the header of a request so that the
//! calls one request causes are one trace (`docs/tracing.md`).
//!
//! `00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>`, as the
//! W3C Trace Context recommendation writes it.

/// One span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, shared by every span of one request's tree (never 0).
    pub trace_id: u128,
    /// This span (never 0).
    pub span_id: u64,
    /// The `sampled` flag: the trace's first caller records it.
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, sampled, with its first span.
    pub fn root() -> Self {
        let trace_id = (u128::from(nonzero_random()) << 64) | u128::from(fastrand::u64(..));
        Self {
            trace_id,
            span_id: nonzero_random(),
            sampled: true,
        }
    }

    /// A span of the same trace whose parent is this one.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_random(),
            ..*self
        }
    }

    /// Reads a `traceparent` value; `None` when it is not one (a receiver
    /// then starts a trace of its own, as the recommendation says).
    ///
    /// ```
    /// use muster_core::wire::TraceContext;
    /// let t = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    /// assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    /// assert_eq!(t.span_id, 0x00f0_67aa_0ba9_02b7);
    /// assert!(t.sampled);
    /// assert_eq!(t.to_traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    /// ```
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim();
        let version = lower_hex(v.get(0..2)?)?;
        // Version ff is invalid; 00 is exactly 55 characters; a later
        // version may append fields after a dash, which are ignored.
        if version == 0xff || v.len() < 55 || (version == 0 && v.len() != 55) {
            return None;
        }
        if v.len() > 55 && v.as_bytes()[55] != b'-' {
            return None;
        }
        let b = v.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = lower_hex(&v[3..35])?;
        let span_id = u64::try_from(lower_hex(&v[36..52])?).ok()?;
        let flags = lower_hex(&v[53..55])?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// The trace id as 32 lowercase hex digits (how log lines show it).
    pub fn trace_id_hex(&self) -> String {
        self.trace_id_text().to_string()
    }

    /// The trace id as 32 lowercase hex digits, on the stack: what a log
    /// span records for every request (`format!("{:032x}")` cost a call
    /// several percent more; `docs/benchmarks.md`, "Trace context").
    pub fn trace_id_text(&self) -> HexId {
        let mut text = [b'0'; 32];
        // 16 bytes always make 32 digits.
        let _ = hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut text);
        HexId(text)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

/// A trace id written out, shown with `Display`.
#[derive(Debug, Clone, Copy)]
pub struct HexId([u8; 32]);

impl std::fmt::Display for HexId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.0).unwrap_or_default())
    }
}

/// A random id from a generator per thread, seeded from the system's
/// randomness: ids need to be unique, not secret (the hashed ids of
/// `id::random_u64` cost more; `docs/benchmarks.md`, "Trace context").
fn nonzero_random() -> u64 {
    fastrand::u64(1..)
}

/// Lowercase hex only, as the recommendation requires.
fn lower_hex(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn what_is_not_a_traceparent_is_refused() {
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?} parsed");
        }
        assert!(TraceContext::parse(VALID).is_some());
        // A later version with a field of its own: the known part is read.
        let later = format!("cc{}-what-comes-next", &VALID[2..]);
        assert_eq!(
            TraceContext::parse(&later).map(|t| t.span_id),
            Some(0x00f0_67aa_0ba9_02b7)
        );
    }

    proptest::proptest! {
        /// A header member comes from the network: nothing it holds
        /// makes the parser panic, and what parses writes back the same.
        #[test]
        fn parsing_never_panics(s in "\\PC{0,70}", dashes in proptest::collection::vec(0usize..70, 0..4)) {
            let mut v: Vec<char> = s.chars().collect();
            for d in dashes {
                if d < v.len() {
                    v[d] = '-';
                }
            }
            let v: String = v.into_iter().collect();
            if let Some(t) = TraceContext::parse(&v) {
                proptest::prop_assert_eq!(TraceContext::parse(&t.to_traceparent()), Some(t));
            }
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_takes_a_span_of_its_own() {
        let root = TraceContext::root();
        assert_ne!(root.trace_id, 0);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(TraceContext::parse(&child.to_traceparent()), Some(child));
        let unsampled = TraceContext {
            sampled: false,
            ..child
        };
        assert!(unsampled.to_traceparent().ends_with("-00"));
    }
}
