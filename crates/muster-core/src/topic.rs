//! Topic names and patterns: `a.b.c`, where `*` matches one token and a
//! final `>` matches one or more tokens (NATS meaning).

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    raw: String,
    tokens: Vec<String>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pattern: String,
    reason: &'static str,
}

impl Pattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// Empty tokens, a `>` that is not last, or a token mixing a wildcard
    /// with other characters.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: raw.to_owned(),
            reason,
        };
        if raw.is_empty() {
            return Err(err("empty"));
        }
        let tokens: Vec<String> = raw.split('.').map(str::to_owned).collect();
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(err("empty token"));
            }
            if t == ">" && i + 1 != tokens.len() {
                return Err(err("`>` must be the last token"));
            }
            if t.len() > 1 && (t.contains('*') || t.contains('>')) {
                return Err(err("a wildcard must be a whole token"));
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The longest literal prefix: what a prefix-filtering transport
    /// (ZeroMQ SUB) subscribes to before exact matching.
    pub fn literal_prefix(&self) -> String {
        let literal: Vec<&str> = self
            .tokens
            .iter()
            .take_while(|t| *t != "*" && *t != ">")
            .map(String::as_str)
            .collect();
        if literal.len() == self.tokens.len() {
            return self.raw.clone();
        }
        let mut p = literal.join(".");
        if !p.is_empty() {
            p.push('.');
        }
        p
    }

    /// True when `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for t in &self.tokens {
            match (t.as_str(), parts.next()) {
                (">", Some(p)) => return !p.is_empty(),
                ("*", Some(p)) if !p.is_empty() => {}
                (lit, Some(p)) if lit == p => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// Checks a topic to publish on: non-empty tokens, no wildcards.
pub fn is_valid_topic(topic: &str) -> bool {
    // One pass over the bytes, not a split and two searches per token: it
    // runs on every event published (a tenth of a NATS publish's own work).
    // An empty token is a dot at the start, after a dot, or at the end.
    let mut after_dot = true;
    for &b in topic.as_bytes() {
        match b {
            b'*' | b'>' => return false,
            b'.' if after_dot => return false,
            _ => {}
        }
        after_dot = b == b'.';
    }
    !after_dot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).unwrap().matches(t)
    }

    proptest::proptest! {
        #[test]
        fn a_valid_topic_is_dot_separated_tokens_without_wildcards(
            topic in "[a.*>é]{0,8}",
        ) {
            let by_tokens = !topic.is_empty()
                && topic
                    .split('.')
                    .all(|t| !t.is_empty() && !t.contains('*') && !t.contains('>'));
            proptest::prop_assert_eq!(is_valid_topic(&topic), by_tokens);
        }
    }

    #[test]
    fn matching() {
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.bc"));
        assert!(!m("a.b", "a.b.c"));
        assert!(m("a.*.c", "a.x.c"));
        assert!(!m("a.*.c", "a.x.y.c"));
        assert!(m("a.>", "a.x.y"));
        assert!(!m("a.>", "a"));
        assert!(m(">", "anything.at.all"));
        assert!(m("*", "one"));
        assert!(!m("*", "one.two"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(Pattern::parse("a.b").unwrap().literal_prefix(), "a.b");
        assert_eq!(Pattern::parse("a.*.c").unwrap().literal_prefix(), "a.");
        assert_eq!(Pattern::parse(">").unwrap().literal_prefix(), "");
    }

    #[test]
    fn bad_patterns() {
        assert!(Pattern::parse("a..b").is_err());
        assert!(Pattern::parse("a.>.b").is_err());
        assert!(Pattern::parse("a*").is_err());
        assert!(!is_valid_topic("a.*"));
        assert!(is_valid_topic("echo.shouted"));
    }
}
