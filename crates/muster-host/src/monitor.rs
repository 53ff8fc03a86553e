//! The host's monitor: samples every instance (with its children and
//! threads) from `/proc`, joins in the method statistics each instance
//! reports (`$stats`), publishes one sample per transaction on
//! `muster.monitor.<transaction>`, keeps the latest for `muster ctl top`,
//! `muster top` and the HTTP endpoints, and checks resource limits.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use muster::stats::MethodReport;
use muster::{CallOptions, Client};
use serde::{Deserialize, Serialize};

use crate::procstat::{self, CpuHistory, ProcSample, Round};
use crate::status::{InstanceStatus, Status};

/// Topic of a transaction's samples.
pub fn monitor_topic(transaction: &str) -> String {
    format!("muster.monitor.{transaction}")
}

/// One instance in a sample: its status as `ctl status` shows it, its
/// process figures and its method statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSample {
    /// Service.
    pub service: String,
    /// Slot, instance id, state, restarts, uptime, last exit.
    #[serde(flatten)]
    pub status: InstanceStatus,
    /// Its process, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcSample>,
    /// What the instance reports of its methods, jobs and subscriptions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub methods: BTreeMap<String, MethodReport>,
}

/// One transaction's sample, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorSample {
    /// The transaction.
    pub transaction: String,
    /// Its context.
    pub context: String,
    /// Its state.
    pub state: String,
    /// When it was taken (RFC 3339).
    pub at: String,
    /// Its instances.
    pub instances: Vec<InstanceSample>,
}

pub use muster_manifest::Limits;

/// An instance over one of its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct OverLimit {
    /// The instance id.
    pub instance: String,
    /// Which limit, with the figures.
    pub reason: String,
}

/// How long connection counts, open files, memory-map summaries, child
/// lists and method statistics are reused between samples: they cost far
/// more to gather than CPU and memory figures (kernel socket tables,
/// files per process, an RPC per instance), and change more slowly.
const SLOW_FIGURES_EVERY: Duration = Duration::from_secs(5);

/// Instances the monitor samples a second, at most. Reading one from
/// `/proc` costs the host about 45 µs of CPU (`docs/benchmarks.md`, "A
/// thousand instances on one host"), so past 250 instances it samples
/// less often than `monitor_every`, and the slow figures less often than
/// every 5 s, in proportion: every 4 s and 20 s at 1,000.
const INSTANCES_PER_SEC: u64 = 250;

/// How often to sample `instances` running instances when `every`
/// (the manifest's `monitor_every`) is asked for.
pub fn sample_interval(every: Duration, instances: usize) -> Duration {
    let instances = u64::try_from(instances).unwrap_or(u64::MAX);
    every.max(Duration::from_millis(
        instances.saturating_mul(1000) / INSTANCES_PER_SEC,
    ))
}

/// How long the slow figures of `instances` instances are kept.
fn slow_figures_every(instances: usize) -> Duration {
    SLOW_FIGURES_EVERY.max(sample_interval(Duration::ZERO, instances) * 5)
}

/// The monitor's memory between samples.
#[derive(Debug, Default)]
pub struct Monitor {
    cpu: CpuHistory,
    /// Stat files held open, and the dearer figures with their age.
    cache: Option<procstat::SampleCache>,
    /// When the slow figures were last gathered.
    slow_at: Option<Instant>,
    /// Per instance: method statistics, as last asked.
    methods: HashMap<String, BTreeMap<String, MethodReport>>,
    /// Per instance: recent (time, CPU %) for the CPU limit.
    cpu_window: HashMap<String, VecDeque<(Instant, f64)>>,
    latest: Vec<MonitorSample>,
}

/// Shared handle on the monitor.
pub type SharedMonitor = Arc<Mutex<Monitor>>;

impl Monitor {
    /// The latest samples.
    pub fn latest(&self) -> Vec<MonitorSample> {
        self.latest.clone()
    }
}

/// Takes one sample of every transaction in `status`, and returns the
/// instances over their limits (`limits` by `transaction/service`).
///
/// `every` is how often samples are taken ([`sample_interval`]): a CPU
/// limit's window counts as covered when its oldest sample is that much
/// younger than the window.
pub async fn sample(
    monitor: &SharedMonitor,
    status: &Status,
    client: &Client,
    limits: &HashMap<String, Limits>,
    every: Duration,
) -> (Vec<MonitorSample>, Vec<OverLimit>) {
    let pids: Vec<u32> = status
        .transactions
        .iter()
        .flat_map(|t| &t.services)
        .flat_map(|s| &s.instances)
        .filter_map(|i| i.pid)
        .collect();
    let slow_every = slow_figures_every(pids.len());
    let slow = {
        let mut mon = monitor.lock().unwrap_or_else(PoisonError::into_inner);
        let due = mon.slow_at.is_none_or(|t| t.elapsed() >= slow_every);
        if due {
            mon.slow_at = Some(Instant::now());
        }
        due
    };
    let procs = processes(monitor, pids, slow, slow_every).await;
    let methods = method_reports(monitor, status, client, slow).await;

    let at = chrono::Utc::now().to_rfc3339();
    let samples: Vec<MonitorSample> = status
        .transactions
        .iter()
        .map(|t| MonitorSample {
            transaction: t.transaction.clone(),
            context: t.context.clone(),
            state: t.state.clone(),
            at: at.clone(),
            instances: t
                .services
                .iter()
                .flat_map(|s| {
                    s.instances.iter().map(|i| InstanceSample {
                        service: s.name.clone(),
                        status: i.clone(),
                        process: i.pid.and_then(|p| procs.get(&p).cloned()),
                        methods: methods.get(&i.instance).cloned().unwrap_or_default(),
                    })
                })
                .collect(),
        })
        .collect();
    let mut mon = monitor.lock().unwrap_or_else(PoisonError::into_inner);
    let over = over_limits(&mut mon, &samples, limits, every);
    mon.latest = samples.clone();
    (samples, over)
}

/// `/proc` figures of `pids` and their children, read off the runtime's
/// threads. Open files and connections are counted on slow rounds only
/// and carried over in between.
async fn processes(
    monitor: &SharedMonitor,
    pids: Vec<u32>,
    slow: bool,
    slow_every: Duration,
) -> HashMap<u32, ProcSample> {
    let m = monitor.clone();
    tokio::task::spawn_blocking(move || {
        let mut mon = m.lock().unwrap_or_else(PoisonError::into_inner);
        let mut round = if slow { Round::slow() } else { Round::fast() };
        let mut cache = mon.cache.take().unwrap_or_default();
        cache.every = slow_every;
        let mut seen = HashSet::new();
        let out: HashMap<u32, ProcSample> = pids
            .iter()
            .filter_map(|p| {
                procstat::sample(*p, &mut round, &mut mon.cpu, &mut cache, &mut seen, 2)
            })
            .map(|s| (s.pid, s))
            .collect();
        mon.cpu.retain(&seen);
        cache.retain(&seen);
        mon.cache = Some(cache);
        out
    })
    .await
    .unwrap_or_default()
}

/// Method statistics by instance: asked of every running instance at once
/// on slow rounds, the last answers in between.
async fn method_reports(
    monitor: &SharedMonitor,
    status: &Status,
    client: &Client,
    slow: bool,
) -> HashMap<String, BTreeMap<String, MethodReport>> {
    if !slow {
        return monitor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .methods
            .clone();
    }
    let asks = status
        .transactions
        .iter()
        .flat_map(|t| &t.services)
        .flat_map(|s| s.instances.iter().map(move |i| (s.name.clone(), i)))
        .filter(|(_, i)| i.state == "running")
        .map(|(service, i)| {
            let client = client.clone();
            let instance = i.instance.clone();
            async move {
                let opts = CallOptions::default()
                    .instance(instance.clone())
                    .timeout(Duration::from_millis(500));
                let r: Option<muster::stats::StatsReport> = client
                    .call_with(&format!("{service}.$stats"), &serde_json::json!({}), opts)
                    .await
                    .ok();
                (instance, r.map(|r| r.methods).unwrap_or_default())
            }
        });
    let fresh: HashMap<_, _> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .collect();
    monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .methods
        .clone_from(&fresh);
    fresh
}

/// Instances over their service's memory limit, or over its CPU limit on
/// average over a full window (kept per instance in `mon`).
fn over_limits(
    mon: &mut Monitor,
    samples: &[MonitorSample],
    limits: &HashMap<String, Limits>,
    every: Duration,
) -> Vec<OverLimit> {
    let now = Instant::now();
    let mut over = Vec::new();
    for t in samples {
        for i in &t.instances {
            let Some(p) = &i.process else { continue };
            let Some(l) = limits.get(&format!("{}/{}", t.transaction, i.service)) else {
                continue;
            };
            let rss = total_rss(p);
            if let Some(max) = l.max_rss
                && rss > max
            {
                over.push(OverLimit {
                    instance: i.status.instance.clone(),
                    reason: format!(
                        "resident memory {} MB over the limit of {} MB",
                        rss >> 20,
                        max >> 20
                    ),
                });
                continue;
            }
            if let Some(max) = l.max_cpu {
                let w = mon.cpu_window.entry(i.status.instance.clone()).or_default();
                w.push_back((now, total_cpu(p)));
                while w
                    .front()
                    .is_some_and(|(t0, _)| now.duration_since(*t0) > l.cpu_window)
                {
                    w.pop_front();
                }
                let full = w
                    .front()
                    .is_some_and(|(t0, _)| covers(now.duration_since(*t0), every, l.cpu_window));
                let avg = w.iter().map(|(_, c)| c).sum::<f64>() / w.len().max(1) as f64;
                if full && avg > max {
                    over.push(OverLimit {
                        instance: i.status.instance.clone(),
                        reason: format!(
                            "CPU {avg:.0}% over {:?} is over the limit of {max:.0}%",
                            l.cpu_window
                        ),
                    });
                    w.clear();
                }
            }
        }
    }
    let live: HashSet<&str> = samples
        .iter()
        .flat_map(|t| t.instances.iter().map(|i| i.status.instance.as_str()))
        .collect();
    mon.cpu_window.retain(|k, _| live.contains(k.as_str()));
    over
}

/// True when samples `every` apart, the oldest `oldest` ago, cover
/// `window`: the next sample would push the oldest out. (Half a second
/// of slack for ticks that drift.)
fn covers(oldest: Duration, every: Duration, window: Duration) -> bool {
    oldest + every + Duration::from_millis(500) >= window
}

/// RSS of a process and its children.
pub fn total_rss(p: &ProcSample) -> u64 {
    p.rss + p.children.iter().map(total_rss).sum::<u64>()
}

/// CPU % of a process and its children.
pub fn total_cpu(p: &ProcSample) -> f64 {
    p.cpu + p.children.iter().map(total_cpu).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_250_instances_samples_slow_down_in_proportion() {
        let second = Duration::from_secs(1);
        assert_eq!(sample_interval(second, 0), second);
        assert_eq!(sample_interval(second, 250), second);
        assert_eq!(sample_interval(second, 1000), Duration::from_secs(4));
        // A longer interval of the manifest's wins.
        let ten = Duration::from_secs(10);
        assert_eq!(sample_interval(ten, 1000), ten);
        assert_eq!(slow_figures_every(100), SLOW_FIGURES_EVERY);
        assert_eq!(slow_figures_every(1000), Duration::from_secs(20));
    }

    #[test]
    fn a_cpu_window_is_covered_by_samples_of_any_spacing() {
        let s = Duration::from_secs;
        // Every second: the oldest of a 10 s window is 9 s old when full.
        assert!(covers(s(9), s(1), s(10)));
        assert!(!covers(s(8), s(1), s(10)));
        // Every 4 s (1,000 instances): no sample is ever more than 8 s old
        // inside a 10 s window, and that is full.
        assert!(covers(s(8), s(4), s(10)));
        assert!(!covers(s(4), s(4), s(10)));
    }
}
