//! One stopped subscriber holds up nobody (issue 14): `muster sub` is
//! SIGSTOPped for 20 s while 2,000,000 events are published under the demo
//! context. The other subscriber keeps receiving, the demo's triggers keep
//! firing, and afterwards every event is accounted for: received, or
//! dropped by the bus and counted by the subscriber that missed it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster::Client;
use muster_test::Proc;
use muster_test::host::Host;
use nix::sys::signal::Signal;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");
const EVENTS: u64 = 2_000_000;
const STALL: Duration = Duration::from_secs(20);

/// Lifecycle `started` events of the state machine's services.
fn is_chain_start(v: &serde_json::Value) -> bool {
    v["event"] == "started" && v["service"] != "echo"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_subscriber_stalls_nobody_and_every_event_is_accounted_for() {
    let manifest = include_str!("../demo/muster.toml");
    let host = Host::up(MUSTER, "slow-sub", manifest).await;
    host.wait_state("stand", 0, "running").await;

    // The demo's triggers, counted as they fire.
    let mut lifecycle = host.events().await;
    let chain = Arc::new(AtomicU64::new(0));
    let counter = chain.clone();
    tokio::spawn(async move {
        while let Some(e) = lifecycle.recv().await {
            if is_chain_start(&e.payload) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // The subscriber that will be stopped.
    let mut cmd = Command::new(MUSTER);
    cmd.args(["sub", "load.>", "--bus", &host.bus])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut stalled = Proc::spawn("muster sub", cmd);
    let (stdout, stderr) = stalled.take_output();
    let received_by_stalled = Arc::new(AtomicU64::new(0));
    let lines = received_by_stalled.clone();
    let stdout_reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("\"load.x\"") {
                lines.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let (stderr_tx, stderr_lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if stderr_tx.send(line).is_err() {
                break;
            }
        }
    });
    // `muster sub` says so once the bus confirmed its subscription.
    let said = stderr_lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(said.starts_with("subscribed to"), "{said}");

    // The subscriber that keeps reading, in this process.
    let client = Client::connect(&host.bus).await.unwrap();
    let mut watcher = client.subscribe(&["load.>"]).await.unwrap();

    stalled.signal(Signal::SIGSTOP);
    let stopped_at = Instant::now();
    let chain_before = chain.load(Ordering::Relaxed);

    let watched = Arc::new(AtomicU64::new(0));
    let seen = watched.clone();
    let watch = tokio::spawn(async move {
        while seen.load(Ordering::Relaxed) + watcher.missed() < EVENTS {
            match tokio::time::timeout(Duration::from_secs(30), watcher.recv()).await {
                Ok(Some(e)) if e.topic == "load.x" => {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        watcher.missed()
    });

    let publisher = Client::connect(&host.bus).await.unwrap();
    let started = Instant::now();
    for n in 0..EVENTS {
        tokio::time::timeout(Duration::from_secs(10), publisher.publish("load.x", &n))
            .await
            .expect("a stopped subscriber never holds up a publisher")
            .unwrap();
    }
    let published_in = started.elapsed();
    let during_stall = watched.load(Ordering::Relaxed);
    eprintln!(
        "published {EVENTS} events in {published_in:?} ({:.0}/s); the reading subscriber had {during_stall} of them ({:.0}/s) while the other was stopped",
        EVENTS as f64 / published_in.as_secs_f64(),
        during_stall as f64 / published_in.as_secs_f64()
    );
    // The stall is the case under test and is real time: the host's
    // triggers must keep firing through it.
    if let Some(rest) = STALL.checked_sub(stopped_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let chain_during = chain.load(Ordering::Relaxed) - chain_before;
    stalled.signal(Signal::SIGCONT);
    let resumed_at = Instant::now();

    let watcher_missed = watch.await.unwrap();
    let watcher_got = watched.load(Ordering::Relaxed);
    eprintln!("reading subscriber: {watcher_got} received, {watcher_missed} missed");
    assert_eq!(
        watcher_got + watcher_missed,
        EVENTS,
        "the reading subscriber accounts for every event"
    );
    assert!(during_stall > 0, "the reading subscriber kept receiving");

    // The stalled subscriber drains what it was kept, then reports.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received_by_stalled.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let chain_after = chain.load(Ordering::Relaxed) - chain_before - chain_during;
    stalled.signal(Signal::SIGTERM);
    let status = stalled.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    stdout_reader.join().unwrap();
    let stderr: Vec<String> = stderr_lines.iter().collect();
    let received = received_by_stalled.load(Ordering::Relaxed);
    let missed = stderr
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("muster sub: ")?
                .split_once(" events received, ")?
                .1
                .strip_suffix(" missed")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    eprintln!(
        "stopped subscriber: {received} received, {missed} missed; demo triggers fired {chain_during} times during the stall and {chain_after} in the {:?} after",
        resumed_at.elapsed()
    );
    assert_eq!(
        received + missed,
        EVENTS,
        "the stopped subscriber accounts for every event: {stderr:?}"
    );
    assert!(
        missed > 0,
        "the stopped subscriber's own queue overflowed (the case under test)"
    );
    assert!(
        chain_during >= 3,
        "the demo's triggers kept firing during the stall"
    );
    let more = muster_test::eventually(
        Duration::from_secs(20),
        "triggers fire after the stall",
        || {
            let n = chain.load(Ordering::Relaxed) - chain_before - chain_during;
            async move { (n >= 2).then_some(n) }
        },
    )
    .await;
    assert!(more >= 2);
    let (code, out, _) = {
        let o = Command::new(MUSTER)
            .args([
                "call",
                "echo.shout",
                r#"{"text":"still"}"#,
                "--bus",
                &host.bus,
            ])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            (),
        )
    };
    assert_eq!((code, out.trim()), (Some(0), r#"{"text":"still"}"#));
}
