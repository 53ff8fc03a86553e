//! `muster bench latency`: latency under a steady load, open loop. The
//! requests go out on a fixed schedule whatever the answers do, and each
//! latency is measured from its request's scheduled send time, so a stall
//! shows in every request it delays instead of slowing the sender down
//! ("coordinated omission"). muster's maximum rate is measured first;
//! then muster and raw DEALER-ROUTER each run at 25%, 50% and 75% of it
//! (`--loads`), in the same run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster::Client;
use omq_tokio::{Message, Socket};

use super::rpc::{self, CpuMeter};
use super::{BenchCmd, fmt_rate};

/// Requests answered later than this count as lost.
const GIVE_UP: Duration = Duration::from_secs(10);

/// Samples of the first part of a run are dropped (connections warming).
const WARM_UP: Duration = Duration::from_millis(200);

pub(super) async fn run(cmd: &BenchCmd) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd.loads.iter().all(|l| l.is_finite() && *l > 0.0),
        "--loads takes percentages above 0, such as 25,50,75"
    );
    let in_flight = cmd.in_flight.max(1);
    let payload = Arc::new("x".repeat(cmd.size.saturating_sub(2)));
    let (bus, mut server, client) = rpc::muster_server().await?;
    let max = rpc::muster_pipelined(&client, in_flight, &payload, cmd.duration).await?;
    let (mut router, dealer) = rpc::raw_dealer().await?;
    println!(
        "{:<14} muster's maximum {} calls/s (x{in_flight} in flight); open loop at {}% of it for {:?} each,",
        "latency",
        fmt_rate(max),
        cmd.loads
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        cmd.duration
    );
    println!(
        "{:<14} from each request's scheduled send time (µs); hand-over: how late the schedule itself was",
        ""
    );
    println!(
        "{:<14} {:>10}  {:>27}  {:>27}  {:>9}  {:>15}  {:>13}",
        "",
        "calls/s",
        "muster p50/p99/p99.9/max",
        "raw p50/p99/p99.9/max",
        "p99 ratio",
        "hand-over p99",
        "CPU µs/call"
    );
    for &percent in &cmd.loads {
        let rate = max * percent / 100.0;
        let muster_cpu = CpuMeter::start(server.id());
        let muster = open_loop_muster(&client, &payload, rate, cmd.duration).await;
        let muster_cpu = muster.cpu_per_call(&muster_cpu);
        let raw_cpu = CpuMeter::start(router.id());
        let raw = open_loop_raw(&dealer, cmd.size, rate, cmd.duration).await?;
        let raw_cpu = raw.cpu_per_call(&raw_cpu);
        let ratio = if raw.p(0.99) > 0 {
            muster.p(0.99) as f64 / raw.p(0.99) as f64
        } else {
            0.0
        };
        println!(
            "{:<14} {:>10}  {:>27}  {:>27}  {ratio:>9.2}  {:>15}  {:>13}",
            format!("  {percent:.0}%"),
            fmt_rate(rate),
            muster.summary(),
            raw.summary(),
            format!("{} / {}", muster.handover_p99, raw.handover_p99),
            format!("{muster_cpu:.1} / {raw_cpu:.1}"),
        );
    }
    router.kill().await.ok();
    server.kill().await.ok();
    bus.stop().await;
    Ok(())
}

/// What one open-loop run measured.
struct Latencies {
    /// Microseconds, sorted.
    micros: Vec<u64>,
    /// Requests sent (after the warm-up).
    sent: usize,
    /// Requests sent, the warm-up's included.
    requests: u64,
    /// The 99th percentile of how late each request reached the task that
    /// sends it (µs): the schedule's own lateness, which no latency of the
    /// run can be below. On a busy 2-core machine it is milliseconds.
    handover_p99: u64,
}

impl Latencies {
    fn from(samples: &Mutex<Vec<u64>>, handed: &Mutex<Vec<u64>>, schedule: &Schedule) -> Self {
        let sent = schedule.sent_after_warm_up();
        let sorted = |m: &Mutex<Vec<u64>>| {
            let mut v = std::mem::take(&mut *m.lock().unwrap_or_else(|p| p.into_inner()));
            v.sort_unstable();
            v
        };
        Self {
            micros: sorted(samples),
            sent,
            requests: schedule.count,
            handover_p99: quantile(&sorted(handed), 0.99),
        }
    }

    /// User + system CPU of the caller and the instance that `since` has
    /// seen used, per request of the run (µs; the warm-up's requests
    /// included, as they used CPU too, and the caller's schedule thread).
    fn cpu_per_call(&self, since: &CpuMeter) -> f64 {
        let (caller, instance) = since.per_thousand(self.requests);
        caller + instance
    }

    fn p(&self, q: f64) -> u64 {
        quantile(&self.micros, q)
    }

    fn summary(&self) -> String {
        let lost = self.sent.saturating_sub(self.micros.len());
        let mut s = format!(
            "{}/{}/{}/{}",
            self.p(0.50),
            self.p(0.99),
            self.p(0.999),
            self.micros.last().copied().unwrap_or(0)
        );
        if lost > 0 {
            s.push_str(&format!(" ({lost} lost)"));
        }
        s
    }
}

/// The `q` quantile of `sorted`, exact (nearest rank); 0 when empty.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The schedule of one run: request `i` is due at `start + i / rate`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: f64,
    count: u64,
}

impl Schedule {
    fn new(rate: f64, duration: Duration) -> Self {
        Self {
            // Time for the first sends to be handed over.
            start: Instant::now() + Duration::from_millis(20),
            rate,
            count: (rate * duration.as_secs_f64()) as u64,
        }
    }

    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    fn counted(&self, due: Instant) -> bool {
        due >= self.start + WARM_UP
    }

    /// Hands each request number to the runtime at its due time, from a
    /// thread of its own: `thread::sleep` wakes within tens of
    /// microseconds, where the runtime's timer rounds to a millisecond.
    /// Both muster and the baseline go through it, so its slack is in
    /// both columns.
    fn drive(self) -> tokio::sync::mpsc::UnboundedReceiver<u64> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for i in 0..self.count {
                let wait = self.due(i).saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if tx.send(i).is_err() {
                    return;
                }
            }
        });
        rx
    }

    fn sent_after_warm_up(&self) -> usize {
        (0..self.count)
            .filter(|&i| self.counted(self.due(i)))
            .count()
    }
}

fn record(samples: &Mutex<Vec<u64>>, schedule: &Schedule, due: Instant) {
    if schedule.counted(due) {
        let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
        samples.lock().unwrap_or_else(|p| p.into_inner()).push(us);
    }
}

/// muster: each request a task of its own, started at its due time.
async fn open_loop_muster(
    client: &Client,
    payload: &Arc<String>,
    rate: f64,
    duration: Duration,
) -> Latencies {
    let schedule = Schedule::new(rate, duration);
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut due = schedule.drive();
    let mut calls = Vec::with_capacity(schedule.count as usize);
    let handed: Arc<Mutex<Vec<u64>>> = Arc::default();
    while let Some(i) = due.recv().await {
        record(&handed, &schedule, schedule.due(i));
        let (client, payload, samples) = (client.clone(), payload.clone(), samples.clone());
        calls.push(tokio::spawn(async move {
            let answered: Result<String, _> = client
                .call_with(
                    "bench.echo",
                    payload.as_str(),
                    muster::CallOptions::default().timeout(GIVE_UP),
                )
                .await;
            if answered.is_ok() {
                record(&samples, &schedule, schedule.due(i));
            }
        }));
    }
    for c in calls {
        let _ = c.await;
    }
    Latencies::from(&samples, &handed, &schedule)
}

/// Raw DEALER-ROUTER: the request's number travels in its body, and one
/// reader takes the answers.
async fn open_loop_raw(
    dealer: &Socket,
    size: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Latencies> {
    let schedule = Schedule::new(rate, duration);
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let reader = {
        let (dealer, samples) = (dealer.clone(), samples.clone());
        tokio::spawn(async move {
            for _ in 0..schedule.count {
                let Ok(Ok(m)) = tokio::time::timeout(GIVE_UP, dealer.recv()).await else {
                    return;
                };
                let Some(seq) = m
                    .part_bytes(0)
                    .and_then(|p| p.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
                else {
                    continue;
                };
                record(&samples, &schedule, schedule.due(u64::from_le_bytes(seq)));
            }
        })
    };
    let mut due = schedule.drive();
    let mut body = vec![b'x'; size.max(8)];
    let handed: Arc<Mutex<Vec<u64>>> = Arc::default();
    while let Some(i) = due.recv().await {
        record(&handed, &schedule, schedule.due(i));
        body[..8].copy_from_slice(&i.to_le_bytes());
        dealer
            .send(Message::single(Bytes::copy_from_slice(&body)))
            .await?;
    }
    let _ = reader.await;
    Ok(Latencies::from(&samples, &handed, &schedule))
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&sorted, 0.50), 500);
        assert_eq!(quantile(&sorted, 0.99), 990);
        assert_eq!(quantile(&sorted, 0.999), 999);
        assert_eq!(quantile(&sorted, 1.0), 1000);
        // Below the first rank: the smallest sample, not an index of 0 - 1.
        assert_eq!(quantile(&sorted, 0.0), 1);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.99), 0);
    }
}
