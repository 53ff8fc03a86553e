//! Which traces are recorded: the standard `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`, read once per process. The decision is the
//! `sampled` flag of the request's trace context, which its nested calls
//! carry on, so a trace is exported whole or not at all (with the default,
//! `parentbased_always_on`).
//!
//! | `OTEL_TRACES_SAMPLER` | a trace this service starts | a trace it joins |
//! |---|---|---|
//! | `parentbased_always_on` (default) | recorded | as the caller says |
//! | `parentbased_always_off` | not recorded | as the caller says |
//! | `parentbased_traceidratio` | by ratio | as the caller says |
//! | `always_on` / `always_off` | recorded / not | recorded / not |
//! | `traceidratio` | by ratio | by ratio |
//!
//! The ratio (`OTEL_TRACES_SAMPLER_ARG`, 0 to 1, default 1) is decided
//! from the trace id, so every service that samples by ratio keeps the
//! same traces.

use std::sync::OnceLock;

use crate::wire::TraceContext;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Decide {
    Always(bool),
    /// Recorded when the trace id's last 63 bits are under this bound.
    Ratio(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sampler {
    /// Follow the caller's flag when there is a caller.
    parent_based: bool,
    /// Otherwise (or always, when not parent-based).
    decide: Decide,
}

static SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// The span of a request: a child of the caller's span, or the first of
/// a new trace, sampled as the process's sampler says.
pub(crate) fn span_for(caller: Option<TraceContext>) -> TraceContext {
    let sampler = SAMPLER.get_or_init(|| {
        from_values(
            std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
            std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
        )
    });
    sampler.span_for(caller)
}

impl Sampler {
    fn span_for(&self, caller: Option<TraceContext>) -> TraceContext {
        let mut span = caller.map_or_else(TraceContext::root, |c| c.child());
        span.sampled = match (caller, self.parent_based) {
            (Some(c), true) => c.sampled,
            _ => match self.decide {
                Decide::Always(yes) => yes,
                // The trace id's lower 64 bits, as other SDKs read them.
                Decide::Ratio(bound) => ((span.trace_id as u64) >> 1) < bound,
            },
        };
        span
    }
}

/// The sampler the variables name; the default, with a warning, for a
/// value that is not one.
fn from_values(name: Option<&str>, arg: Option<&str>) -> Sampler {
    let ratio = || {
        let r = match arg.map(str::trim).filter(|a| !a.is_empty()) {
            None => 1.0,
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    tracing::warn!(
                        arg = a,
                        "OTEL_TRACES_SAMPLER_ARG is not a ratio from 0 to 1; using 1"
                    );
                    1.0
                }
            },
        };
        // Bounds the 63 bits compared: 1.0 keeps every trace.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bound = (r * (1u64 << 63) as f64) as u64;
        Decide::Ratio(bound)
    };
    let (parent_based, decide) = match name.map(str::trim).unwrap_or("") {
        "" | "parentbased_always_on" => (true, Decide::Always(true)),
        "parentbased_always_off" => (true, Decide::Always(false)),
        "parentbased_traceidratio" => (true, ratio()),
        "always_on" => (false, Decide::Always(true)),
        "always_off" => (false, Decide::Always(false)),
        "traceidratio" => (false, ratio()),
        other => {
            tracing::warn!(
                sampler = other,
                "OTEL_TRACES_SAMPLER names a sampler muster does not have; using parentbased_always_on"
            );
            (true, Decide::Always(true))
        }
    };
    Sampler {
        parent_based,
        decide,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sampled: bool) -> Option<TraceContext> {
        let mut t = TraceContext::root();
        t.sampled = sampled;
        Some(t)
    }

    #[test]
    fn the_default_records_what_it_starts_and_follows_its_caller() {
        let s = from_values(None, None);
        assert!(s.span_for(None).sampled);
        assert!(s.span_for(caller(true)).sampled);
        assert!(!s.span_for(caller(false)).sampled);
        assert_eq!(from_values(Some("no_such_sampler"), None), s);
    }

    #[test]
    fn always_off_and_on_ignore_the_caller_unless_parent_based() {
        let off = from_values(Some("always_off"), None);
        assert!(!off.span_for(caller(true)).sampled);
        let on = from_values(Some("always_on"), None);
        assert!(on.span_for(caller(false)).sampled);
        let parent_off = from_values(Some("parentbased_always_off"), None);
        assert!(!parent_off.span_for(None).sampled);
        assert!(parent_off.span_for(caller(true)).sampled);
    }

    #[test]
    fn a_ratio_keeps_about_that_share_and_decides_by_trace_id() {
        let s = from_values(Some("traceidratio"), Some("0.25"));
        let kept = (0..10_000).filter(|_| s.span_for(None).sampled).count();
        assert!((2_000..3_000).contains(&kept), "{kept} of 10000 at 0.25");
        // The same trace id, the same decision, whatever the caller said.
        let c = caller(true);
        let first = s.span_for(c).sampled;
        assert!((0..20).all(|_| s.span_for(c).sampled == first));
        assert!(
            !from_values(Some("traceidratio"), Some("0"))
                .span_for(None)
                .sampled
        );
        assert!(
            from_values(Some("traceidratio"), Some("1"))
                .span_for(None)
                .sampled
        );
        // Not a ratio: all kept.
        assert!(
            from_values(Some("traceidratio"), Some("2"))
                .span_for(None)
                .sampled
        );
    }
}
