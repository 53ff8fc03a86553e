//! What a JetStream message's reply subject says about its delivery.
//!
//! async-nats's `Message::info` reads all of it: nine fields, a timestamp
//! into a date. A queue consumer needs two numbers, and `info` cost 2,000
//! instructions a job, a tenth of the consumer's own work at prefetch 100
//! (callgrind, `docs/benchmarks.md`, "NATS jobs at prefetch 100"). This
//! reads only those two, in 580.

/// How often a message has been delivered (1 the first time) and its
/// sequence in its stream, from its reply subject: `$JS.ACK.<stream>.
/// <consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the same with a domain and an account hash before the stream (and a
/// token after), the layout newer servers send. `None` for anything else.
pub(crate) fn delivery(reply: &str) -> Option<(u64, u64)> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    // Where each of the first tokens starts and ends; the count decides
    // which layout this is.
    let mut bounds = [(0usize, 0usize); 6];
    let mut tokens = 0;
    let mut start = 0;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'.' {
            if let Some(slot) = bounds.get_mut(tokens) {
                *slot = (start, i);
            }
            tokens += 1;
            start = i + 1;
        }
    }
    if let Some(slot) = bounds.get_mut(tokens) {
        *slot = (start, rest.len());
    }
    tokens += 1;
    let delivered_at = match tokens {
        7 => 2,
        n if n >= 9 => 4,
        _ => return None,
    };
    let number = |(from, to): (usize, usize)| rest.get(from..to)?.parse::<u64>().ok();
    Some((
        number(bounds[delivered_at])?,
        number(bounds[delivered_at + 1])?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_are_read() {
        for (reply, expected) in [
            (
                "$JS.ACK.muster_Q_mail.muster.1.42.40.1764700000000000000.7",
                (1, 42),
            ),
            (
                "$JS.ACK._.ACCHASH.muster_Q_mail.muster.3.43.40.1764700000000000000.7",
                (3, 43),
            ),
            (
                "$JS.ACK.hub.ACCHASH.muster_Q_mail.muster.4.44.40.1764700000000000000.7.tok",
                (4, 44),
            ),
        ] {
            assert_eq!(delivery(reply), Some(expected), "{reply}");
        }
    }

    #[test]
    fn anything_else_is_none() {
        for reply in [
            "",
            "_INBOX.x.y",
            "$JS.ACK.",
            "$JS.ACK.s.c.1.2.3.4",
            "$JS.ACK.s.c.x.2.3.4.5",
            "$JS.ACK.s.c.1.-2.3.4.5",
            "$JS.ACK.d.h.s.c.1.2.3.4",
        ] {
            assert_eq!(delivery(reply), None, "{reply:?}");
        }
    }
}
