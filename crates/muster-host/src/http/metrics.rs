//! `/metrics`: the host's samples as metric families, written as
//! Prometheus text (0.0.4) or OpenMetrics 1.0, whichever the scraper asks
//! for (`Accept`).
//!
//! Written by hand rather than with `prometheus-client`: the families are
//! snapshots built per scrape from the monitor's samples (that crate is
//! built around live, registered metrics), and it writes OpenMetrics only,
//! while plain Prometheus text must stay for every other scraper. The two
//! formats differ in three places, all below: counter names, summaries'
//! sample names, and the `# EOF` trailer.

use std::fmt::Write as _;

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Gauge,
    /// Samples are named `<name>_total`.
    Counter,
    /// Quantile samples plus `_sum` and `_count`.
    Summary,
}

/// One sample: its label set (already `k="v",...`) and value. Summary
/// samples carry a suffix (`""` for a quantile, `_sum`, `_count`).
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) suffix: &'static str,
    pub(crate) labels: String,
    pub(crate) value: f64,
}

impl Sample {
    pub(crate) fn new(labels: String, value: f64) -> Self {
        Self {
            suffix: "",
            labels,
            value,
        }
    }
}

/// A metric family, named without `_total`.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    pub(crate) samples: Vec<Sample>,
}

/// Which text format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it, else Prometheus.
    pub(crate) fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Escapes a label value (backslash, quote, newline), for both formats.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes every family in `format`.
pub(crate) fn render(families: &[Family], format: Format) -> String {
    let mut out = String::new();
    for f in families {
        let (type_name, type_word) = match (f.kind, format) {
            (Kind::Counter, Format::Prometheus) => (format!("{}_total", f.name), "counter"),
            (Kind::Counter, Format::OpenMetrics) => (f.name.to_owned(), "counter"),
            (Kind::Gauge, _) => (f.name.to_owned(), "gauge"),
            (Kind::Summary, _) => (f.name.to_owned(), "summary"),
        };
        let _ = writeln!(out, "# HELP {type_name} {}", f.help);
        let _ = writeln!(out, "# TYPE {type_name} {type_word}");
        for s in &f.samples {
            let name = match f.kind {
                Kind::Counter => format!("{}_total", f.name),
                _ => format!("{}{}", f.name, s.suffix),
            };
            let value = number(s.value);
            if s.labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {value}", s.labels);
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// A sample value: integers without a fraction, the special values as
/// both formats spell them.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Vec<Family> {
        vec![
            Family {
                name: "muster_instance_restarts",
                kind: Kind::Counter,
                help: "Restarts",
                samples: vec![Sample::new(r#"service="a""#.into(), 2.0)],
            },
            Family {
                name: "muster_method_latency_seconds",
                kind: Kind::Summary,
                help: "Latency",
                samples: vec![
                    Sample {
                        suffix: "",
                        labels: r#"method="m",quantile="0.5""#.into(),
                        value: 0.001,
                    },
                    Sample {
                        suffix: "_sum",
                        labels: r#"method="m""#.into(),
                        value: 0.5,
                    },
                    Sample {
                        suffix: "_count",
                        labels: r#"method="m""#.into(),
                        value: 100.0,
                    },
                ],
            },
        ]
    }

    #[test]
    fn counters_are_named_as_each_format_wants() {
        let prom = render(&families(), Format::Prometheus);
        assert!(prom.contains("# TYPE muster_instance_restarts_total counter\nmuster_instance_restarts_total{service=\"a\"} 2\n"), "{prom}");
        assert!(!prom.contains("# EOF"));
        let om = render(&families(), Format::OpenMetrics);
        assert!(om.contains("# TYPE muster_instance_restarts counter\nmuster_instance_restarts_total{service=\"a\"} 2\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn summaries_have_sum_and_count() {
        let om = render(&families(), Format::OpenMetrics);
        assert!(
            om.contains("muster_method_latency_seconds_sum{method=\"m\"} 0.5"),
            "{om}"
        );
        assert!(
            om.contains("muster_method_latency_seconds_count{method=\"m\"} 100"),
            "{om}"
        );
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
