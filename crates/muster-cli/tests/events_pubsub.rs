//! Events through the bus: no loss after `subscribe` returns, ordering,
//! the `pub`/`sub` commands, and bounded memory under a fast publisher.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use muster::Client;
use muster_test::{Proc, free_bus_url};
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

fn spawn_bus(url: &str) -> Proc {
    muster_test::spawn_bus_process(MUSTER, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_after_subscribe_arrives_in_order() {
    let url = free_bus_url();
    let _bus = spawn_bus(&url);
    let sub_client = Client::connect(&url).await.unwrap();
    let mut sub = sub_client.subscribe(&["load.*.n"]).await.unwrap();
    let publisher = Client::connect(&url).await.unwrap();
    for i in 0..5_000u64 {
        publisher.publish("load.a.n", &i).await.unwrap();
        if i % 1000 == 0 {
            publisher
                .publish("load.a.other", &"filtered")
                .await
                .unwrap();
        }
    }
    for i in 0..5_000u64 {
        let e = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("event arrives")
            .unwrap();
        assert_eq!(e.topic, "load.a.n");
        assert_eq!(e.payload, json!(i), "in publication order");
    }
    sub.cancel().await;
}

#[test]
fn pub_and_sub_commands() {
    let url = free_bus_url();
    let _bus = spawn_bus(&url);
    let mut cmd = Command::new(MUSTER);
    cmd.args(["sub", "clock.>", "-n", "2", "--bus", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("subscribed to clock.>"), "{line}");
    for n in 1..=2 {
        let o = Command::new(MUSTER)
            .args([
                "pub",
                "clock.tick",
                &format!(r#"{{"n":{n}}}"#),
                "--bus",
                &url,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["topic"], "clock.tick");
    assert_eq!(lines[1]["payload"]["n"], 2);
}

/// `muster sub --durable NAME`: a member that ran once, then left, gets
/// the events published meanwhile when it comes back, in order.
#[test]
fn sub_durable_gets_what_was_published_while_away() {
    let url = free_bus_url();
    let _bus = spawn_bus(&url);
    let sub = |count: &str| {
        let mut cmd = Command::new(MUSTER);
        cmd.args(["sub", "--durable", "ledger", "books.>", "-n", count])
            .args(["--bus", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        cmd.spawn().unwrap()
    };
    let publish = |n: u32| {
        let o = Command::new(MUSTER)
            .args([
                "pub",
                "books.entry",
                &format!(r#"{{"n":{n}}}"#),
                "--bus",
                &url,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // The first run joins the group and takes one event.
    let mut first = sub("1");
    let mut line = String::new();
    BufReader::new(first.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("as a member of the durable group ledger"),
        "{line}"
    );
    publish(0);
    assert!(first.wait_with_output().unwrap().status.success());
    // Nobody of the group runs while these are published.
    for n in 1..=3 {
        publish(n);
    }
    let read = |count: &str| {
        let out = sub(count).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["payload"]["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect::<Vec<u64>>()
    };
    assert_eq!(read("2"), [1, 2], "the events of the time away, in order");
    // What a member did not read stays with the group.
    assert_eq!(
        read("1"),
        [3],
        "the event left unread comes to the next member"
    );
}

#[test]
fn pub_without_a_bus_fails_clearly() {
    let url = free_bus_url();
    let o = Command::new(MUSTER)
        .args(["pub", "a.b", "1", "--bus", &url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no bus takes events"));
}

/// A subscriber that stops reading (its stdout pipe is full) must neither
/// hold up the publisher nor grow the bus or the subscriber without bound:
/// the bus keeps its own bounded queue for it and drops its oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_holds_up_nobody_and_memory_stays_bounded() {
    let url = free_bus_url();
    let bus = spawn_bus(&url);
    let mut cmd = Command::new(MUSTER);
    cmd.args(["sub", "flood.>", "--bus", &url])
        .stdout(Stdio::piped()) // never read
        .stderr(Stdio::piped());
    let mut stuck = Proc::spawn("stuck subscriber", cmd);
    let publisher = Client::connect(&url).await.unwrap();
    // The stuck subscriber is subscribed once an event reaches another
    // subscriber on the same outlet after it started.
    let mut watcher = publisher.subscribe(&["flood.>"]).await.unwrap();
    let bus_before = bus.rss_kib();

    let payload = "x".repeat(1_000);
    let mut sent = 0u64;
    while sent < 200_000 {
        tokio::time::timeout(
            Duration::from_secs(10),
            publisher.publish("flood.x", &payload),
        )
        .await
        .expect("a stuck subscriber never holds up the publisher")
        .unwrap();
        sent += 1;
    }
    // Everything reaches the subscriber that reads (its own bounded
    // queue may drop some while this test publishes faster than it reads;
    // those it counts).
    let mut got = 0u64;
    while got + watcher.missed() < sent {
        let e = tokio::time::timeout(Duration::from_secs(10), watcher.recv())
            .await
            .expect("the reading subscriber keeps receiving");
        assert!(e.is_some());
        got += 1;
    }
    let bus_rss = bus.rss_kib();
    let sub_rss = stuck.rss_kib();
    eprintln!(
        "sent {sent}; reader got {got}, missed {}; bus RSS {bus_before} -> {bus_rss} KiB, stuck subscriber {sub_rss} KiB",
        watcher.missed()
    );
    assert!(bus_rss < 200 * 1024, "bus RSS {bus_rss} KiB");
    assert!(sub_rss < 120 * 1024, "subscriber RSS {sub_rss} KiB");
    // Cancelled while the bus lives: a subscription still receiving when
    // the bus is killed and the runtime then shut down can spin inside
    // omq's receive (seen once, 2026-11-29; open in the closing note).
    watcher.cancel().await;
    stuck.kill9();
}

#[test]
fn pub_rejects_wildcard_topics() {
    let o = Command::new(MUSTER)
        .args(["pub", "a.*", "1", "--bus", "zmq://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("without wildcards"));
}
