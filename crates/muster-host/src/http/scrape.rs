//! What `/metrics` reports: every instance's latest sample (CPU, memory,
//! threads, files, restarts, state, method statistics) and the bus's
//! registry counters, as metric families for [`super::metrics`] to write.

use super::*;

/// `/metrics`: Prometheus text, or OpenMetrics when asked (`Accept`).
pub(super) async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = may_read(&s, &headers) {
        return r;
    }
    let format =
        metrics::Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let latest = s
        .monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latest();
    let body = metrics::render(&families(&latest, &(s.bus)(), &s.host), format);
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

/// The host's metric families from the latest samples and the bus
/// counters, each labelled with the host's name (`host`), so that the
/// hosts of a fleet can be scraped into one view.
fn families(
    latest: &[crate::monitor::MonitorSample],
    bus: &muster_zmq::bus::BusStats,
    host: &str,
) -> Vec<super::metrics::Family> {
    use metrics::{Family, Kind, Sample, label};
    let host = label(host);
    let inst = |t: &crate::monitor::MonitorSample, i: &crate::monitor::InstanceSample| {
        format!(
            r#"host="{host}",transaction="{}",context="{}",service="{}",instance="{}""#,
            label(&t.transaction),
            label(&t.context),
            label(&i.service),
            label(&i.status.instance)
        )
    };
    let all: Vec<_> = latest
        .iter()
        .flat_map(|t| t.instances.iter().map(move |i| (t, i)))
        .collect();
    let per_process = |f: &dyn Fn(&crate::monitor::InstanceSample) -> Option<f64>| {
        all.iter()
            .filter_map(|(t, i)| Some(Sample::new(inst(t, i), f(i)?)))
            .collect()
    };
    let methods: Vec<(String, &muster::stats::MethodReport)> = all
        .iter()
        .flat_map(|(t, i)| {
            i.methods
                .iter()
                .map(move |(m, r)| (format!(r#"{},method="{}""#, inst(t, i), label(m)), r))
        })
        .collect();
    let per_method = |f: &dyn Fn(&muster::stats::MethodReport) -> f64| {
        methods
            .iter()
            .map(|(l, r)| Sample::new(l.clone(), f(r)))
            .collect()
    };
    let bus_value = |v: u64| vec![Sample::new(format!(r#"host="{host}""#), v as f64)];
    vec![
        Family {
            name: "muster_instance_cpu_percent",
            kind: Kind::Gauge,
            help: "CPU % of one core, the instance and its children",
            samples: per_process(&|i| Some(total_cpu(i.process.as_ref()?))),
        },
        Family {
            name: "muster_instance_resident_bytes",
            kind: Kind::Gauge,
            help: "Resident memory of the instance and its children",
            samples: per_process(&|i| Some(total_rss(i.process.as_ref()?) as f64)),
        },
        Family {
            name: "muster_instance_virtual_bytes",
            kind: Kind::Gauge,
            help: "Virtual memory of the instance process",
            samples: per_process(&|i| Some(i.process.as_ref()?.vms as f64)),
        },
        Family {
            name: "muster_instance_threads",
            kind: Kind::Gauge,
            help: "Threads of the instance process",
            samples: per_process(&|i| Some(i.process.as_ref()?.threads as f64)),
        },
        Family {
            name: "muster_instance_open_files",
            kind: Kind::Gauge,
            help: "Open file descriptors of the instance process",
            samples: per_process(&|i| Some(i.process.as_ref()?.open_files as f64)),
        },
        Family {
            name: "muster_instance_restarts",
            kind: Kind::Counter,
            help: "Restarts of the instance's slot",
            samples: per_process(&|i| Some(f64::from(i.status.restarts))),
        },
        Family {
            name: "muster_instance_up",
            kind: Kind::Gauge,
            help: "1 while the instance is running (ready)",
            samples: all
                .iter()
                .map(|(t, i)| {
                    Sample::new(
                        format!(r#"{},state="{}""#, inst(t, i), label(&i.status.state)),
                        f64::from(u8::from(i.status.state == "running")),
                    )
                })
                .collect(),
        },
        Family {
            name: "muster_method_requests",
            kind: Kind::Counter,
            help: "Requests (or events, or job runs) handled",
            samples: per_method(&|r| r.num_requests as f64),
        },
        Family {
            name: "muster_method_errors",
            kind: Kind::Counter,
            help: "Requests that ended in an error reply",
            samples: per_method(&|r| r.num_errors as f64),
        },
        Family {
            name: "muster_method_in_flight",
            kind: Kind::Gauge,
            help: "Requests being handled now",
            samples: per_method(&|r| r.in_flight as f64),
        },
        Family {
            name: "muster_method_latency_seconds",
            kind: Kind::Summary,
            help: "Handler time quantiles",
            samples: methods
                .iter()
                .flat_map(|(l, r)| {
                    let sample = |suffix, labels, value| Sample {
                        suffix,
                        labels,
                        value,
                    };
                    [
                        sample("", format!(r#"{l},quantile="0.5""#), r.p50_us as f64 / 1e6),
                        sample("", format!(r#"{l},quantile="0.99""#), r.p99_us as f64 / 1e6),
                        sample(
                            "_sum",
                            l.clone(),
                            (r.average_processing_time_us as f64 * r.num_requests as f64) / 1e6,
                        ),
                        sample("_count", l.clone(), r.num_requests as f64),
                    ]
                })
                .collect(),
        },
        Family {
            name: "muster_bus_instances",
            kind: Kind::Gauge,
            help: "Instances registered on the bus",
            samples: bus_value(bus.instances),
        },
        Family {
            name: "muster_bus_expired",
            kind: Kind::Counter,
            help: "Instances dropped for missed heartbeats",
            samples: bus_value(bus.expired),
        },
        Family {
            name: "muster_bus_heartbeats",
            kind: Kind::Counter,
            help: "Heartbeats the registry received",
            samples: bus_value(bus.heartbeats),
        },
        Family {
            name: "muster_bus_heartbeats_answered",
            kind: Kind::Counter,
            help: "Heartbeats the registry answered (an unknown instance, a new interval)",
            samples: bus_value(bus.heartbeats_answered),
        },
        Family {
            name: "muster_bus_listings_whole",
            kind: Kind::Counter,
            help: "Registry listings sent whole",
            samples: bus_value(bus.listings_whole),
        },
        Family {
            name: "muster_bus_listings_of_changes",
            kind: Kind::Counter,
            help: "Registry listings sent as the changes since the caller's version",
            samples: bus_value(bus.listings_of_changes),
        },
        Family {
            name: "muster_bus_bad_messages",
            kind: Kind::Counter,
            help: "Malformed messages the registry dropped",
            samples: bus_value(bus.bad_messages),
        },
        Family {
            name: "muster_bus_events_forwarded",
            kind: Kind::Counter,
            help: "Event messages the bus forwarded from publishers",
            samples: bus_value(bus.events_forwarded),
        },
        Family {
            name: "muster_bus_bad_subscriptions",
            kind: Kind::Counter,
            help: "Messages on the event outlet that were not subscriptions",
            samples: bus_value(bus.bad_subscriptions),
        },
        Family {
            name: "muster_bus_durable_dropped",
            kind: Kind::Counter,
            help: "Events of durable groups dropped to keep within their retention",
            samples: bus_value(bus.durable_dropped),
        },
    ]
}
