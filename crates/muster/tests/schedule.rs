//! Scheduled jobs driven by a virtual clock: tokio's paused time moves
//! the clock, so a day of schedule takes milliseconds and no test sleeps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster::prelude::*;
use muster::schedule::{Clock, Misfire, VirtualClock};
use muster::testing::TestBus;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Records when each run starts, and how many run at once.
#[derive(Clone)]
struct Recorder {
    clock: Arc<VirtualClock>,
    starts: Arc<Mutex<Vec<DateTime<Utc>>>>,
    running: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
    takes: Duration,
}

impl Recorder {
    fn new(origin: &str, takes: Duration) -> Self {
        Self {
            clock: Arc::new(VirtualClock::starting_at(t(origin))),
            starts: Arc::default(),
            running: Arc::default(),
            most_at_once: Arc::default(),
            takes,
        }
    }

    fn job(
        &self,
    ) -> impl Fn(Ctx) -> std::pin::Pin<Box<dyn Future<Output = Result<(), muster::Error>> + Send>>
    + Send
    + Sync
    + 'static {
        let r = self.clone();
        move |_ctx: Ctx| {
            let r = r.clone();
            Box::pin(async move {
                r.starts.lock().unwrap().push(r.clock.now());
                let n = r.running.fetch_add(1, Ordering::SeqCst) + 1;
                r.most_at_once.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(r.takes).await;
                r.running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    fn service(&self, name: &str) -> Service {
        Service::new(name).clock(self.clock.clone())
    }

    /// Start times in RFC 3339.
    fn full_starts(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(DateTime::to_rfc3339)
            .collect()
    }

    /// Start times as `HH:MM:SS.mmm`.
    fn starts(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.format("%H:%M:%S%.3f").to_string())
            .collect()
    }
}

async fn skipped(bus: &TestBus, service: &str, job: &str) -> (u64, u64, u64) {
    let reports = bus.client().stats(Some(service)).await.unwrap();
    let r = reports.into_iter().next().unwrap().unwrap();
    let m = &r.methods[job];
    (m.num_requests, m.num_errors, m.num_skipped)
}

#[tokio::test(start_paused = true)]
async fn an_interval_fires_at_its_multiples() {
    let rec = Recorder::new("2026-01-01T00:00:00.500Z", Duration::ZERO);
    let bus = TestBus::new();
    let _h = bus
        .start(rec.service("s").every(Duration::from_secs(10), rec.job()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(
        rec.starts(),
        ["00:00:10.000", "00:00:20.000", "00:00:30.000"]
    );
}

#[tokio::test(start_paused = true)]
async fn cron_with_a_list_over_two_days() {
    let rec = Recorder::new("2026-01-01T06:00:00Z", Duration::ZERO);
    let bus = TestBus::new();
    let _h = bus
        .start(rec.service("s").cron("0 0,12 * * *", rec.job()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2 * 86_400)).await;
    assert_eq!(
        rec.full_starts(),
        [
            "2026-01-01T12:00:00+00:00",
            "2026-01-02T00:00:00+00:00",
            "2026-01-02T12:00:00+00:00",
            "2026-01-03T00:00:00+00:00"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_daily_time_in_a_zone_across_the_spring_change() {
    let rec = Recorder::new("2026-03-27T12:00:00Z", Duration::ZERO);
    let bus = TestBus::new();
    let _h = bus
        .start(rec.service("s").at("02:30", rec.job()).tz("Europe/Berlin"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3 * 86_400)).await;
    assert_eq!(
        rec.full_starts(),
        [
            "2026-03-28T01:30:00+00:00",
            "2026-03-29T01:00:00+00:00",
            "2026-03-30T00:30:00+00:00"
        ]
    );
}

/// A 1 s schedule whose runs take 2.5 s, watched for 9.7 s.
async fn slow_job(policy: Misfire) -> (Recorder, (u64, u64, u64)) {
    let rec = Recorder::new("2026-01-01T00:00:00.500Z", Duration::from_millis(2500));
    let bus = TestBus::new();
    let _h = bus
        .start(
            rec.service("s")
                .every(Duration::from_secs(1), rec.job())
                .misfire(policy),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(9_700)).await;
    assert_eq!(
        rec.most_at_once.load(Ordering::SeqCst),
        1,
        "runs never overlap"
    );
    let counts = skipped(&bus, "s", "schedule:every 1s").await;
    (rec, counts)
}

#[tokio::test(start_paused = true)]
async fn busy_fire_times_are_skipped_and_counted_under_skip() {
    let (rec, (_, _, skipped)) = slow_job(Misfire::Skip).await;
    assert_eq!(
        rec.starts(),
        [
            "00:00:01.000",
            "00:00:04.000",
            "00:00:07.000",
            "00:00:10.000"
        ]
    );
    assert_eq!(skipped, 6, "2, 3, 5, 6, 8, 9");
}

#[tokio::test(start_paused = true)]
async fn run_once_runs_one_for_all_that_were_missed() {
    let (rec, (_, _, skipped)) = slow_job(Misfire::RunOnce).await;
    assert_eq!(
        rec.starts(),
        [
            "00:00:01.000",
            "00:00:03.500",
            "00:00:06.000",
            "00:00:08.500"
        ]
    );
    assert_eq!(skipped, 4, "2 at 3.5; 4, 5 at 6; 7 at 8.5");
}

#[tokio::test(start_paused = true)]
async fn catch_up_runs_each_missed_one() {
    let (rec, (_, _, skipped)) = slow_job(Misfire::CatchUp(10)).await;
    assert_eq!(
        rec.starts(),
        [
            "00:00:01.000",
            "00:00:03.500",
            "00:00:06.000",
            "00:00:08.500"
        ]
    );
    assert_eq!(skipped, 0);
}

#[tokio::test(start_paused = true)]
async fn after_the_clock_jumps_catch_up_is_bounded() {
    let rec = Recorder::new("2026-01-01T00:00:05Z", Duration::ZERO);
    let bus = TestBus::new();
    let _h = bus
        .start(
            rec.service("s")
                .every(Duration::from_secs(10), rec.job())
                .misfire(Misfire::CatchUp(3)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await; // the run at :10
    rec.clock.jump(Duration::from_secs(60)); // asleep from :11 to 1:11
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        rec.starts(),
        [
            "00:00:10.000",
            "00:01:20.000",
            "00:01:20.000",
            "00:01:20.000"
        ]
    );
    let (runs, _, skipped) = skipped(&bus, "s", "schedule:every 10s").await;
    assert_eq!(
        (runs, skipped),
        (4, 4),
        ":20 to :80 missed: 7 fire times, the last 3 run"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_job_does_not_stop_the_schedule() {
    let clock = Arc::new(VirtualClock::starting_at(t("2026-01-01T00:00:00.5Z")));
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let bus = TestBus::new();
    let _h =
        bus.start(Service::new("s").clock(clock).every(
            Duration::from_secs(1),
            move |_ctx: Ctx| {
                let i = count.fetch_add(1, Ordering::SeqCst);
                async move {
                    match i % 3 {
                        0 => Err(muster::Error::new(muster::ErrorKind::Io, "disk full")),
                        1 => panic!("job bug"),
                        _ => Ok(()),
                    }
                }
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(6_200)).await; // to 00:00:06.7
    assert_eq!(n.load(Ordering::SeqCst), 6);
    let (runs, errors, _) = skipped(&bus, "s", "schedule:every 1s").await;
    assert_eq!((runs, errors), (6, 4));
}

#[tokio::test(start_paused = true)]
async fn run_at_startup_runs_at_once() {
    let rec = Recorder::new("2026-01-01T00:00:00.5Z", Duration::ZERO);
    let bus = TestBus::new();
    let _h = bus
        .start(
            rec.service("s")
                .every(Duration::from_secs(60), rec.job())
                .run_at_startup(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(rec.starts(), ["00:00:00.500", "00:01:00.000"]);
}

#[tokio::test(start_paused = true)]
async fn two_instances_run_each_fire_time_once_between_them() {
    let rec = Recorder::new("2026-01-01T00:00:00.5Z", Duration::from_millis(100));
    let bus = TestBus::new();
    let _a = bus
        .start(rec.service("s").cron("* * * * * *", rec.job()))
        .await
        .unwrap();
    let _b = bus
        .start(rec.service("s").cron("* * * * * *", rec.job()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10_200)).await;
    let starts = rec.starts();
    let expected: Vec<String> = (1..=10).map(|s| format!("00:00:{s:02}.000")).collect();
    assert_eq!(starts, expected);
}

/// Each run is the first span of a trace of its own: the handler sees a
/// trace with no parent, and no two runs share one.
#[tokio::test(start_paused = true)]
async fn each_run_starts_a_trace_of_its_own() {
    let clock = Arc::new(VirtualClock::starting_at(t("2026-01-01T00:00:00Z")));
    type Seen = Vec<(Option<muster::wire::TraceContext>, Option<u64>)>;
    let traces: Arc<Mutex<Seen>> = Arc::default();
    let kept = traces.clone();
    let bus = TestBus::new();
    let _h =
        bus.start(Service::new("s").clock(clock).every(
            Duration::from_secs(10),
            move |ctx: Ctx| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push((ctx.trace(), ctx.trace_parent()));
                    Ok::<_, muster::Error>(())
                }
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let traces = traces.lock().unwrap().clone();
    let [(Some(first), None), (Some(second), None)] = traces[..] else {
        panic!("two runs, each with a trace and no parent: {traces:?}");
    };
    assert_ne!(first.trace_id, second.trace_id);
}
