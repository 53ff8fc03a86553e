//! The supervision rules, driven without processes: a simulated driver
//! plays spawns, exits, registrations and timers. (One file past 600
//! lines: every test is a scenario on the one simulated driver above them.)

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use muster::schedule::Clock;
use serde_json::{Value, json};

use super::*;
use crate::manifest::{ContextSpec, ManifestError};
use crate::status::InstanceStatus;

/// The context of a manifest given as text, as if read from
/// `/tmp/m/muster.toml`.
fn parse_text(src: &str) -> Result<ContextSpec, ManifestError> {
    crate::manifest::parse(
        std::path::Path::new("/tmp/m/muster.toml"),
        src,
        true,
        &crate::manifest::Substitutions::default(),
    )
    .map(|(_, c)| c)
}

/// A wall clock the simulation sets.
#[derive(Debug)]
struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

struct Sim {
    sup: Supervisor,
    wall: Arc<ManualClock>,
    now: Instant,
    next_pid: u32,
    /// pid -> (transaction, generation)
    procs: HashMap<u32, (String, u64)>,
    timers: Vec<(Duration, Timer)>,
    signals: Vec<(u32, StopSignal)>,
    published: Vec<(String, Value)>,
    spawns: Vec<String>,
    /// The claim of each spawn, in order.
    claims: Vec<Option<String>>,
    /// Claims another host of the fleet holds.
    taken: std::collections::HashSet<String>,
}

impl Sim {
    fn new(manifest: &str) -> Self {
        let ctx = parse_text(manifest).unwrap();
        let wall = Arc::new(ManualClock(std::sync::Mutex::new(
            "2026-01-01T00:00:00.500Z".parse().unwrap(),
        )));
        Self {
            sup: Supervisor::new(&[Arc::new(ctx)]).with_clock(wall.clone()),
            wall,
            now: Instant::now(),
            next_pid: 100,
            procs: HashMap::new(),
            timers: Vec::new(),
            signals: Vec::new(),
            published: Vec::new(),
            spawns: Vec::new(),
            claims: Vec::new(),
            taken: std::collections::HashSet::new(),
        }
    }

    fn feed(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Spawn(s) => {
                    let key = s.claim.as_ref().map(|c| c.key.clone());
                    self.claims.push(key.clone());
                    if key.is_some_and(|k| self.taken.contains(&k)) {
                        let more = self.sup.ran_elsewhere(
                            self.now,
                            &s.transaction,
                            s.generation,
                            "another host",
                        );
                        self.feed(more);
                        continue;
                    }
                    self.next_pid += 1;
                    let pid = self.next_pid;
                    self.procs
                        .insert(pid, (s.transaction.clone(), s.generation));
                    self.spawns.push(s.spec.name.clone());
                    let more = self
                        .sup
                        .spawned(self.now, &s.transaction, s.generation, pid);
                    self.feed(more);
                }
                Effect::Signal { pid, signal } => self.signals.push((pid, signal)),
                Effect::Timer { after, timer } => self.timers.push((after, timer)),
                Effect::Publish { topic, body } => self.published.push((topic, body)),
                Effect::Persist => {}
            }
        }
    }

    fn start(&mut self) -> String {
        let (r, e) = self.sup.start(self.now, None, Some("T1".into()));
        self.feed(e);
        r.unwrap()
    }

    fn slot(&self, service: &str, slot: usize) -> InstanceStatus {
        let st = self.sup.status(self.now, Some("T1"));
        st.transactions[0]
            .services
            .iter()
            .find(|s| s.name == service)
            .unwrap()
            .instances[slot]
            .clone()
    }

    fn state(&self, service: &str) -> String {
        self.slot(service, 0).state
    }

    fn register(&mut self, service: &str, slot: usize) {
        let i = self.slot(service, slot).instance;
        let e = self.sup.registered(self.now, &i);
        self.feed(e);
    }

    fn register_all(&mut self) {
        let st = self.sup.status(self.now, Some("T1"));
        for s in &st.transactions[0].services {
            for i in &s.instances {
                if i.state == "starting" {
                    let e = self.sup.registered(self.now, &i.instance);
                    self.feed(e);
                }
            }
        }
    }

    /// The process of `service` slot `slot` ends with `status`.
    fn end(&mut self, service: &str, slot: usize, status: ExitStatus) {
        let pid = self.slot(service, slot).pid.expect("has a process");
        self.end_pid(pid, status);
    }

    fn end_pid(&mut self, pid: u32, status: ExitStatus) {
        let (t, g) = self.procs.remove(&pid).unwrap();
        let e = self.sup.exited(self.now, &t, g, status);
        self.feed(e);
    }

    /// Every signalled process exits (as SIGTERM would make it).
    fn obey_signals(&mut self) {
        while !self.signals.is_empty() {
            let sigs = std::mem::take(&mut self.signals);
            for (pid, _) in sigs {
                if self.procs.contains_key(&pid) {
                    self.end_pid(pid, ExitStatus::Signal(15));
                }
            }
        }
    }

    /// Fires every pending timer of a kind.
    fn fire(&mut self, pick: impl Fn(&Timer) -> bool) -> usize {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers)
            .into_iter()
            .partition(|(_, t)| pick(t));
        self.timers = keep;
        let n = due.len();
        for (after, t) in due {
            self.advance(after);
            let e = self.sup.timer(self.now, t);
            self.feed(e);
        }
        n
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        *self.wall.0.lock().unwrap() += chrono::Duration::from_std(by).unwrap();
    }

    fn schedule(&self, service: &str) -> Value {
        let st = serde_json::to_value(self.sup.status(self.now, Some("T1"))).unwrap();
        st["transactions"][0]["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap()["schedule"]
            .clone()
    }

    fn events(&self, service: &str, event: &str) -> usize {
        self.published
            .iter()
            .filter(|(t, b)| {
                t.starts_with("muster.control.") && b["service"] == service && b["event"] == event
            })
            .count()
    }

    fn context_events(&self, event: &str) -> Vec<Value> {
        self.published
            .iter()
            .filter(|(t, b)| t == "muster.context" && b["event"] == event)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn is_restart(t: &Timer) -> bool {
    matches!(t, Timer::Restart { .. })
}
fn is_group(t: &Timer) -> bool {
    matches!(t, Timer::Group { .. })
}

const THREE: &str = r#"
[context]
name = "c"
strategy = "STRATEGY"
max_restarts = 3
within_secs = 60
[[service]]
name = "a"
run = ["/bin/a"]
[[service]]
name = "b"
run = ["/bin/b"]
[[service]]
name = "c"
run = ["/bin/c"]
"#;

#[test]
fn one_for_one_restarts_only_the_dead_instance_after_a_backoff() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_one"));
    sim.start();
    assert_eq!(sim.spawns, ["a", "b", "c"]);
    sim.register_all();
    assert_eq!(sim.events("b", "started"), 1);
    sim.end("b", 0, ExitStatus::Signal(9));
    assert_eq!(sim.events("b", "failed"), 1);
    assert_eq!(sim.state("b"), "backoff");
    let (delay, _) = sim
        .timers
        .iter()
        .find(|(_, t)| is_restart(t))
        .unwrap()
        .clone();
    assert!(
        delay >= Duration::from_millis(100) && delay <= Duration::from_millis(120),
        "{delay:?}"
    );
    assert!(sim.signals.is_empty(), "nobody else is touched");
    sim.fire(is_restart);
    assert_eq!(sim.spawns, ["a", "b", "c", "b"]);
    sim.register("b", 0);
    assert_eq!(sim.events("b", "started"), 2);
    assert_eq!(sim.slot("b", 0).restarts, 1);
}

#[test]
fn backoff_doubles_in_a_row_and_resets_after_a_stable_run() {
    let mut sim = Sim::new(
        &THREE
            .replace("STRATEGY", "one_for_one")
            .replace("max_restarts = 3", "max_restarts = 100"),
    );
    sim.start();
    sim.register_all();
    let mut delays = Vec::new();
    for _ in 0..4 {
        sim.end("a", 0, ExitStatus::Code(1));
        delays.push(sim.timers.iter().find(|(_, t)| is_restart(t)).unwrap().0);
        sim.fire(is_restart);
        sim.register("a", 0);
    }
    for w in delays.windows(2) {
        assert!(w[1] > w[0].mul_f64(1.6), "{delays:?}");
    }
    sim.now += Duration::from_secs(11);
    sim.end("a", 0, ExitStatus::Code(1));
    let d = sim.timers.iter().find(|(_, t)| is_restart(t)).unwrap().0;
    assert!(
        d <= Duration::from_millis(120),
        "reset after a stable run: {d:?}"
    );
}

#[test]
fn transient_and_temporary() {
    let m = THREE
        .replace("STRATEGY", "one_for_one")
        .replace("name = \"a\"", "name = \"a\"\nrestart = \"transient\"")
        .replace("name = \"b\"", "name = \"b\"\nrestart = \"temporary\"");
    let mut sim = Sim::new(&m);
    sim.start();
    sim.register_all();
    sim.end("a", 0, ExitStatus::Code(0));
    assert_eq!(sim.events("a", "exited"), 1);
    assert_eq!(sim.state("a"), "exited");
    sim.end("b", 0, ExitStatus::Code(3));
    assert_eq!(sim.state("b"), "failed");
    assert!(
        sim.timers.iter().all(|(_, t)| !is_restart(t)),
        "neither restarts"
    );
    // transient does restart after a failure
    let (_, e) = sim.sup.restart(sim.now, "T1", Some("a"));
    sim.feed(e);
    sim.fire(is_group);
    sim.register("a", 0);
    sim.end("a", 0, ExitStatus::Code(2));
    assert_eq!(sim.state("a"), "backoff");
}

#[test]
fn one_for_all_restarts_everyone() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_all"));
    sim.start();
    sim.register_all();
    sim.end("b", 0, ExitStatus::Code(1));
    let a = sim.slot("a", 0).pid.unwrap();
    let c = sim.slot("c", 0).pid.unwrap();
    let mut signalled: Vec<u32> = sim.signals.iter().map(|s| s.0).collect();
    signalled.sort_unstable();
    assert_eq!(signalled, [a, c]);
    sim.obey_signals();
    assert_eq!(sim.events("a", "stopped"), 1);
    assert_eq!(sim.fire(is_group), 1);
    assert_eq!(sim.spawns, ["a", "b", "c", "a", "b", "c"]);
    for s in ["a", "b", "c"] {
        assert_eq!(sim.slot(s, 0).restarts, 1, "{s}");
    }
}

#[test]
fn instances_of_a_group_process_are_recognised() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_one"));
    sim.start();
    let i = sim.slot("a", 0).instance;
    let e = sim.sup.registered(sim.now, &format!("{i}-svc"));
    sim.feed(e);
    assert_eq!(sim.state("a"), "running");
    let e = sim.sup.registered(sim.now, &format!("{i}x"));
    sim.feed(e);
    assert_eq!(sim.events("a", "started"), 1);
}

#[test]
fn rest_for_one_restarts_the_rest() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "rest_for_one"));
    sim.start();
    sim.register_all();
    let c = sim.slot("c", 0).pid.unwrap();
    sim.end("b", 0, ExitStatus::Code(1));
    assert_eq!(sim.signals.iter().map(|s| s.0).collect::<Vec<_>>(), [c]);
    sim.obey_signals();
    sim.fire(is_group);
    assert_eq!(sim.spawns, ["a", "b", "c", "b", "c"]);
    assert_eq!(sim.state("a"), "running");
}

#[test]
fn a_failure_during_a_group_restart_delay_joins_the_group() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "rest_for_one"));
    sim.start();
    sim.register_all();
    sim.end("c", 0, ExitStatus::Code(1)); // group {c}: its delay starts
    sim.end("a", 0, ExitStatus::Code(1)); // group {a, b, c}: b must stop first
    assert_eq!(sim.state("b"), "stopping");
    sim.fire(is_group); // the first delay ends: stale, nothing starts yet
    assert_eq!(sim.spawns, ["a", "b", "c"]);
    sim.obey_signals(); // b is down: the group's own delay starts
    sim.fire(is_group);
    assert_eq!(sim.spawns, ["a", "b", "c", "a", "b", "c"]);
    sim.register_all();
    for s in ["a", "b", "c"] {
        assert_eq!(sim.state(s), "running", "{s}");
    }
}

#[test]
fn over_budget_fails_and_stops_the_context() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_one"));
    sim.start();
    sim.register_all();
    for _ in 0..3 {
        sim.end("a", 0, ExitStatus::Code(1));
        sim.fire(is_restart);
        sim.register("a", 0);
    }
    sim.end("a", 0, ExitStatus::Code(1));
    assert_eq!(sim.context_events("stopping").len(), 1);
    sim.obey_signals();
    let failed = sim.context_events("failed");
    assert_eq!(failed.len(), 1);
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("more than 3 restarts within 60s"),
        "{reason}"
    );
    let st = sim.sup.status(sim.now, Some("T1"));
    assert_eq!(st.transactions[0].state, "failed");
    assert!(sim.sup.is_idle());
}

const CHAIN: &str = r#"
[context]
name = "walkabout"
[[service]]
name = "stand"
run = ["/bin/stand"]
restart = "transient"
on_update = { start = ["walk"] }
on_exit = { start = ["coffee"] }
[[service]]
name = "walk"
run = ["/bin/walk"]
autostart = false
on_start = { stop = ["coffee"] }
[[service]]
name = "coffee"
run = ["/bin/coffee"]
autostart = false
on_fail = { exit = true }
"#;

#[test]
fn each_event_fires_its_trigger_once() {
    let mut sim = Sim::new(CHAIN);
    sim.start();
    assert_eq!(sim.spawns, ["stand"]);
    sim.register("stand", 0);
    sim.register("stand", 0); // a second registration is no second start
    assert_eq!(sim.events("stand", "started"), 1);
    let i = sim.slot("stand", 0).instance;
    let e = sim.sup.updated(sim.now, &i, json!({"state": "standing"}));
    sim.feed(e);
    assert_eq!(sim.spawns, ["stand", "walk"]);
    let e = sim
        .sup
        .updated(sim.now, &i, json!({"state": "still standing"}));
    sim.feed(e);
    assert_eq!(sim.events("stand", "updated"), 2);
    assert_eq!(sim.spawns, ["stand", "walk"], "walk is already starting");
    sim.end("stand", 0, ExitStatus::Code(0));
    assert_eq!(
        sim.spawns,
        ["stand", "walk", "coffee"],
        "on_exit started coffee"
    );
    sim.register("coffee", 0);
    sim.register("walk", 0);
    // walk's on_start stopped coffee
    sim.obey_signals();
    assert_eq!(sim.events("coffee", "stopped"), 1);
    assert_eq!(sim.state("coffee"), "stopped");
}

#[test]
fn a_start_trigger_brings_a_dead_service_back_and_exit_ends_the_context() {
    let mut sim = Sim::new(CHAIN);
    sim.start();
    sim.register("stand", 0);
    sim.end("stand", 0, ExitStatus::Code(0));
    sim.register("coffee", 0);
    sim.end("coffee", 0, ExitStatus::Code(0)); // coffee is permanent: backoff
    sim.fire(is_restart);
    sim.register("coffee", 0);
    sim.end("coffee", 0, ExitStatus::Code(5));
    assert_eq!(sim.events("coffee", "failed"), 1);
    assert_eq!(sim.context_events("stopping").len(), 1, "on_fail exit");
    sim.obey_signals();
    assert_eq!(sim.context_events("exited").len(), 1);
    assert!(
        sim.sup.status(sim.now, None).transactions.is_empty(),
        "an exited transaction is forgotten"
    );
}

const ORDERED: &str = r#"
[context]
name = "app"
[[service]]
name = "web"
run = ["/bin/web"]
after = ["db"]
instances = 2
[[service]]
name = "db"
run = ["/bin/db"]
"#;

#[test]
fn after_waits_for_readiness_and_stop_runs_in_reverse() {
    let mut sim = Sim::new(ORDERED);
    sim.start();
    assert_eq!(sim.spawns, ["db"]);
    assert_eq!(sim.state("web"), "waiting");
    sim.register("db", 0);
    assert_eq!(sim.spawns, ["db", "web", "web"]);
    sim.register_all();
    let (_, e) = sim.sup.stop(sim.now, "T1", None);
    sim.feed(e);
    let db = sim.slot("db", 0).pid.unwrap();
    assert!(
        sim.signals.iter().all(|s| s.0 != db),
        "db waits for web to stop"
    );
    assert_eq!(sim.signals.len(), 2);
    let first: Vec<u32> = sim.signals.drain(..).map(|s| s.0).collect();
    sim.end_pid(first[0], ExitStatus::Signal(15));
    assert!(sim.signals.is_empty(), "one web still runs");
    sim.end_pid(first[1], ExitStatus::Signal(15));
    assert_eq!(sim.signals.iter().map(|s| s.0).collect::<Vec<_>>(), [db]);
    sim.obey_signals();
    assert_eq!(sim.context_events("stopped").len(), 1);
    assert!(
        sim.timers
            .iter()
            .any(|(d, t)| matches!(t, Timer::Kill { .. }) && *d == Duration::from_secs(5))
    );
}

#[test]
fn missed_heartbeats_and_slow_starts_are_failures() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_one"));
    sim.start();
    sim.register("a", 0);
    let i = sim.slot("a", 0).instance;
    let e = sim.sup.expired(sim.now, &i);
    sim.feed(e);
    assert_eq!(sim.signals.last().unwrap().1, StopSignal::Kill);
    sim.end("a", 0, ExitStatus::Signal(9));
    let failed = sim
        .published
        .iter()
        .find(|(_, b)| b["event"] == "failed")
        .unwrap();
    assert_eq!(failed.1["reason"], "missed heartbeats");
    // b never registers: its ready timer fails it
    sim.fire(|t| matches!(t, Timer::Ready { .. }));
    sim.end("b", 0, ExitStatus::Signal(9));
    let reason = sim
        .published
        .iter()
        .rev()
        .find(|(_, b)| b["event"] == "failed")
        .unwrap()
        .1["reason"]
        .clone();
    assert!(
        reason.as_str().unwrap().contains("not registered"),
        "{reason}"
    );
}

#[test]
fn reload_applies_only_the_difference() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_one"));
    sim.start();
    sim.register_all();
    let new = THREE
        .replace("STRATEGY", "one_for_one")
        .replace("[[service]]\nname = \"a\"\nrun = [\"/bin/a\"]\n", "")
        .replace("run = [\"/bin/b\"]", "run = [\"/bin/b\", \"--fast\"]")
        + "[[service]]\nname = \"d\"\nrun = [\"/bin/d\"]\n";
    let ctx = parse_text(&new).unwrap();
    let c_pid = sim.slot("c", 0).pid;
    let (report, e) = sim.sup.reload(sim.now, &[Arc::new(ctx)]);
    sim.feed(e);
    assert_eq!(report.stopped, ["T1/a"]);
    assert_eq!(report.restarted, ["T1/b"]);
    assert_eq!(report.unchanged, ["T1/c"]);
    assert_eq!(report.started, ["T1/d"]);
    sim.obey_signals();
    sim.fire(is_group);
    assert_eq!(sim.spawns, ["a", "b", "c", "d", "b"]);
    assert_eq!(sim.slot("c", 0).pid, c_pid, "c left alone");
}

#[test]
fn shutdown_remembers_running_transactions() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_one"));
    sim.start();
    sim.register_all();
    let e = sim.sup.shutdown(sim.now);
    sim.feed(e);
    sim.obey_signals();
    assert!(sim.sup.is_idle());
    assert_eq!(
        sim.sup.persisted(),
        [Persisted {
            transaction: "T1".into(),
            context: "c".into(),
            last_fires: BTreeMap::new(),
        }]
    );
}

fn is_fire(t: &Timer) -> bool {
    matches!(t, Timer::Fire { .. })
}

const SCHEDULED: &str = r#"
[context]
name = "cron"
[[service]]
name = "report"
run = ["/bin/report"]
schedule = "every 10s"
misfire = "MISFIRE"
"#;

#[test]
fn a_scheduled_service_runs_on_its_fire_times_and_records_runs() {
    let mut sim = Sim::new(&SCHEDULED.replace("MISFIRE", "run_once"));
    sim.start();
    assert!(sim.spawns.is_empty(), "not started with the context");
    let wait = sim.timers.iter().find(|(_, t)| is_fire(t)).unwrap().0;
    assert_eq!(wait, Duration::from_millis(9_500));
    sim.fire(is_fire);
    assert_eq!(sim.spawns, ["report"]);
    sim.register("report", 0);
    sim.end("report", 0, ExitStatus::Code(0));
    assert!(
        sim.timers.iter().all(|(_, t)| !is_restart(t)),
        "run to completion: no restart"
    );
    sim.fire(is_fire);
    sim.register("report", 0);
    sim.end("report", 0, ExitStatus::Code(3));
    let s = sim.schedule("report");
    assert_eq!(
        (
            s["runs"].as_u64(),
            s["succeeded"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(s["recent"][0]["fire"], "2026-01-01T00:00:10+00:00");
    assert_eq!(s["recent"][0]["outcome"], "exit code 0");
    assert_eq!(s["recent"][1]["outcome"], "exit code 3");
    assert_eq!(s["next"], "2026-01-01T00:00:30+00:00");
}

#[test]
fn a_fire_time_another_host_claimed_does_not_run_here() {
    let mut sim = Sim::new(&SCHEDULED.replace("MISFIRE", "run_once"));
    sim.start();
    sim.fire(is_fire); // :10, claimed here
    sim.register("report", 0);
    sim.end("report", 0, ExitStatus::Code(0));
    let at = |secs: i64| {
        format!(
            "host-schedule/cron/report/{}",
            (chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap()
                + chrono::Duration::seconds(secs))
            .timestamp_millis()
        )
    };
    assert_eq!(sim.claims, [Some(at(10))]);
    sim.taken.insert(at(20));
    sim.fire(is_fire); // :20, another host's
    assert_eq!(sim.spawns.len(), 1, "not run here");
    assert_eq!(sim.state("report"), "exited");
    let s = sim.schedule("report");
    assert_eq!(s["elsewhere"], 1);
    assert_eq!(s["runs"], 1, "a run elsewhere is not a run here");
    assert_eq!(s["recent"][1]["outcome"], "not run here: another host");
    sim.fire(is_fire); // :30, here again
    assert_eq!(sim.spawns.len(), 2);
    assert_eq!(sim.claims.last(), Some(&Some(at(30))));
}

fn busy_run(misfire: &str) -> Sim {
    let mut sim = Sim::new(&SCHEDULED.replace("MISFIRE", misfire));
    sim.start();
    sim.fire(is_fire); // :10, starts
    sim.register("report", 0);
    sim.fire(is_fire); // :20 while running
    sim.fire(is_fire); // :30 while running
    assert_eq!(sim.spawns.len(), 1, "runs never overlap");
    sim.end("report", 0, ExitStatus::Code(0));
    sim
}

#[test]
fn fire_times_that_come_while_running_follow_the_misfire_policy() {
    let sim = busy_run("skip");
    assert_eq!(sim.spawns.len(), 1);
    assert_eq!(sim.schedule("report")["skipped"], 2);

    let sim = busy_run("run_once");
    assert_eq!(sim.spawns.len(), 2, "one run for both");
    assert_eq!(sim.schedule("report")["skipped"], 1);
    assert_eq!(
        sim.schedule("report")["recent"][1]["fire"],
        "2026-01-01T00:00:30+00:00"
    );

    let mut sim = busy_run("catch_up");
    assert_eq!(sim.spawns.len(), 2);
    sim.register("report", 0);
    sim.end("report", 0, ExitStatus::Code(0));
    assert_eq!(sim.spawns.len(), 3, "each missed one, back to back");
    assert_eq!(sim.schedule("report")["skipped"], 0);
}

#[test]
fn fire_times_missed_while_the_host_was_down_are_caught_up() {
    let mut sim = Sim::new(&SCHEDULED.replace("MISFIRE", "catch_up:2"));
    sim.advance(Duration::from_secs(60)); // now 01:00.5; last fire was at :10
    let restored = [Persisted {
        transaction: "T1".into(),
        context: "cron".into(),
        last_fires: [("report".to_owned(), 1_767_225_610_000)].into(),
    }];
    let (_, e) = sim.sup.boot(sim.now, &restored);
    sim.feed(e);
    assert_eq!(
        sim.spawns,
        ["report"],
        ":20 .. 1:00 missed, the last two run"
    );
    sim.register("report", 0);
    sim.end("report", 0, ExitStatus::Code(0));
    assert_eq!(sim.spawns.len(), 2);
    sim.register("report", 0);
    sim.end("report", 0, ExitStatus::Code(0));
    assert_eq!(sim.spawns.len(), 2);
    assert_eq!(sim.schedule("report")["skipped"], 3);
}

#[test]
fn refusals_say_what_is_wrong_by_kind() {
    let mut sim = Sim::new(&THREE.replace("STRATEGY", "one_for_one"));
    let (r, _) = sim.sup.start(sim.now, Some("nope"), None);
    assert!(matches!(r, Err(Refusal::UnknownContext(ref c)) if c == "nope"));
    let (r, _) = sim.sup.start(sim.now, None, Some("lower".into()));
    assert!(matches!(r, Err(Refusal::BadTransactionId(_))));
    let t = sim.start();
    let (r, _) = sim.sup.start(sim.now, None, Some(t.clone()));
    let e = r.unwrap_err();
    assert!(matches!(e, Refusal::AlreadyRunning(_)));
    assert_eq!(e.kind(), RefusalKind::Conflict);
    let (r, _) = sim.sup.stop(sim.now, &t, Some("ghost"));
    let e = r.unwrap_err();
    assert!(matches!(e, Refusal::UnknownService { ref service, .. } if service == "ghost"));
    assert_eq!(e.kind(), RefusalKind::NotFound);
    assert_eq!(e.to_string(), "no service \"ghost\" in context c");
    let (r, _) = sim.sup.exit(sim.now, "T9");
    assert!(matches!(r, Err(Refusal::UnknownTransaction(_))));
}
