//! The embedded bus's job log, with real processes: a bus killed with
//! SIGKILL comes back with every job it accepted (those held by consumers
//! included), a job log that cannot be written refuses the enqueue with a
//! clear error and loses nothing it accepted, and a drained log gives its
//! disk back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use muster::Client;
use muster::queue::{QueueCommand, QueueReply, QueueStats};
use muster_test::{Proc, eventually};

const BUS: &str = env!("CARGO_BIN_EXE_muster-test-bus");
const WORKER: &str = env!("CARGO_BIN_EXE_muster-test-worker");
const WAIT: Duration = Duration::from_secs(30);

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "muster-durable-{tag}-{}-{:x}",
        std::process::id(),
        muster::id::random_u64() & 0xff_ffff
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bus(url: &str, log: &Path) -> Proc {
    muster_test::spawn_test_bus(BUS, url, log)
}

async fn stats(client: &Client, queue: &str) -> Option<QueueStats> {
    match client
        .transport()
        .queue_command(queue, QueueCommand::Stats)
        .await
        .ok()?
    {
        QueueReply::Stats(s) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bus_comes_back_with_every_accepted_job() {
    let dir = temp_dir("kill");
    let log = dir.join("queues.redb");
    let url = muster_test::free_bus_url();
    let mut b = bus(&url, &log);
    let client = Client::connect(&url).await.unwrap();
    for n in 0..1000 {
        client
            .enqueue("durable", &serde_json::json!({ "n": n }))
            .await
            .unwrap();
    }
    // A consumer that holds 20 jobs and works on none (a minute each).
    let mut w = Command::new(WORKER);
    w.args(["--queue", "durable", "--record"])
        .arg(dir.join("held.log"))
        .args(["--prefetch", "20", "--delay-ms", "60000"])
        .args(["--bus", &url, "--log-level", "error"]);
    let mut holder = Proc::spawn("muster-test-worker", w);
    eventually(WAIT, "20 jobs held", || async {
        stats(&client, "durable")
            .await
            .filter(|s| s.in_flight == Some(20))
    })
    .await;

    b.kill9();
    holder.kill9();
    let _b = bus(&url, &log);
    let s = eventually(WAIT, "the bus back", || stats(&client, "durable")).await;
    assert_eq!(
        (s.ready, s.in_flight),
        (1000, Some(0)),
        "every accepted job is back, the held ones waiting again"
    );
    // They are delivered, in order, with their first attempt.
    let reply = client
        .transport()
        .queue_command("durable", QueueCommand::Peek { count: 3 })
        .await
        .unwrap();
    let QueueReply::Jobs(first) = reply else {
        panic!("{reply:?}")
    };
    let ns: Vec<(String, u32)> = first
        .iter()
        .map(|j| (String::from_utf8_lossy(&j.body).into_owned(), j.attempt))
        .collect();
    assert_eq!(
        ns,
        [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#].map(|b| (b.to_owned(), 1))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_log_that_cannot_be_made_stops_the_bus_with_the_reason() {
    let dir = temp_dir("unwritable");
    // Its directory would be under a file: no user, root included, can
    // make it.
    std::fs::write(dir.join("file"), "").unwrap();
    let out = Command::new(BUS)
        .arg(muster_test::free_bus_url())
        .arg(dir.join("file/queues.redb"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("job log") && err.contains("file/queues.redb"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A job log on a 2 MiB file system: jobs of 64 KiB are enqueued until
/// the disk is full. Each enqueue either succeeds or fails with the
/// reason; after a SIGKILL every job that succeeded is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_enqueue_and_loses_no_accepted_job() {
    let dir = temp_dir("full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        muster_test::skipped(
            "durable_queues::a_full_disk_refuses_the_enqueue_and_loses_no_accepted_job",
            "cannot mount a small tmpfs (needs root)",
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let unmount = scopeguard(&dir);
    let log = dir.join("queues.redb");
    let url = muster_test::free_bus_url();
    let mut b = bus(&url, &log);
    let client = Client::connect(&url).await.unwrap();
    let body = "x".repeat(64 << 10);
    let (mut accepted, mut refusal) = (0u32, None);
    for n in 0..200 {
        match client
            .enqueue("full", &serde_json::json!({ "n": n, "pad": body }))
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("a 2 MiB disk fills before 200 jobs of 64 KiB");
    assert!(
        refusal.contains("job not kept") && refusal.contains("queues.redb"),
        "{refusal}"
    );
    assert!(accepted > 0, "some jobs fit");
    let s = stats(&client, "full").await.unwrap();
    assert_eq!(
        s.ready,
        u64::from(accepted),
        "the refused job is not queued"
    );
    b.kill9();
    let _b = bus(&url, &log);
    let s = eventually(WAIT, "the bus back", || stats(&client, "full")).await;
    assert_eq!(s.ready, u64::from(accepted), "every accepted job survived");
    drop(_b);
    drop(unmount);
}

/// Unmounts and removes the directory when the test ends, however it ends.
fn scopeguard(dir: &Path) -> impl Drop {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    Unmount(dir.to_owned())
}

/// 20,000 jobs of 1 KiB grow the log past 20 MB; once a consumer has
/// acknowledged them all, the log is compacted back to a few pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_job_log_gives_its_disk_back() {
    let dir = temp_dir("compact");
    let log = dir.join("queues.redb");
    let url = muster_test::free_bus_url();
    let _b = bus(&url, &log);
    let client = Client::connect(&url).await.unwrap();
    let pad = "y".repeat(1024);
    // 64 producers at a time, as the chaos test has.
    let sends = futures_util::stream::iter(0..20_000u32).map(|n| {
        let (client, pad) = (client.clone(), pad.clone());
        async move {
            client
                // Multiples of 10: none is one the worker fails on purpose
                // (`n % 1000 == 7`), so nothing stays in `drain.dead`.
                .enqueue("drain", &serde_json::json!({ "n": n * 10, "pad": pad }))
                .await
                .unwrap();
        }
    });
    sends.buffer_unordered(64).collect::<Vec<()>>().await;
    let full = std::fs::metadata(&log).unwrap().len();
    assert!(full > 20 << 20, "{full} bytes for 20,000 jobs of 1 KiB");
    let mut w = Command::new(WORKER);
    w.args(["--queue", "drain", "--record"])
        .arg(dir.join("drain.log"))
        .args(["--prefetch", "100", "--bus", &url, "--log-level", "error"]);
    let _worker = Proc::spawn("muster-test-worker", w);
    eventually(Duration::from_secs(120), "the queue drained", || async {
        stats(&client, "drain")
            .await
            .filter(|s| s.ready == 0 && s.in_flight == Some(0))
    })
    .await;
    let small = eventually(WAIT, "the log compacted", || async {
        let len = std::fs::metadata(&log).ok()?.len();
        (len < 4 << 20).then_some(len)
    })
    .await;
    println!("job log: {full} bytes with 20,000 jobs, {small} drained");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A durable group's definition and its kept events are in the job log:
/// a bus killed with SIGKILL comes back keeping the group's events before
/// any member is back, and the member gets those of both lives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_group_outlives_a_killed_bus() {
    let dir = temp_dir("group");
    let log = dir.join("queues.redb");
    let url = muster_test::free_bus_url();
    let mut b = bus(&url, &log);
    let retention = muster::Retention::default();
    let member = Client::connect(&url).await.unwrap();
    // Joining declares the group; leaving keeps it.
    member
        .subscribe_durable("audit", &["orders.>"], retention)
        .await
        .unwrap()
        .cancel()
        .await;
    let before = Client::connect(&url).await.unwrap();
    for n in 0..100u32 {
        before.publish("orders.paid", &n).await.unwrap();
    }
    // Published events reach the log asynchronously: kill once all 100
    // are kept.
    eventually(WAIT, "100 events kept", || async {
        stats(&before, "durable.audit")
            .await
            .filter(|s| s.ready == 100)
    })
    .await;
    // A publish is not answered, so nothing says when its event is on
    // disk; an enqueue is answered once written, after what came before
    // it. (A crash loses the kept events of the last fsync window:
    // `docs/guarantees.md`.)
    before.enqueue("sync", &0).await.unwrap();
    b.kill9();
    let _b = bus(&url, &log);
    let after = Client::connect(&url).await.unwrap();
    eventually(WAIT, "the bus back", || stats(&after, "durable.audit")).await;
    for n in 100..200u32 {
        after.publish("orders.paid", &n).await.unwrap();
    }
    // Kept by the bus on its own, before any member says the group again.
    eventually(WAIT, "200 events kept", || async {
        stats(&after, "durable.audit")
            .await
            .filter(|s| s.ready == 200)
    })
    .await;
    let mut sub = after
        .subscribe_durable("audit", &["orders.>"], retention)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 200 {
        let e = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("kept events arrive")
            .expect("the subscription lives");
        got.push(e.payload.as_u64().unwrap());
    }
    assert_eq!(
        got,
        (0..200).collect::<Vec<_>>(),
        "both lives' events, in order"
    );
    sub.cancel().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A durable group keeps what its retention allows: past `max_events`
/// the oldest are dropped, so a member coming back gets the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_group_keeps_the_newest_within_its_retention() {
    let (bus, client, _url) = muster_test::bus_and_client().await;
    let retention = muster::Retention::default().max_events(10);
    client
        .subscribe_durable("recent", &["ticks.>"], retention)
        .await
        .unwrap()
        .cancel()
        .await;
    for n in 0..100u32 {
        client.publish("ticks.n", &n).await.unwrap();
    }
    eventually(WAIT, "the last event kept", || async {
        let QueueReply::Jobs(jobs) = client
            .transport()
            .queue_command("durable.recent", QueueCommand::Peek { count: 100 })
            .await
            .ok()?
        else {
            return None;
        };
        let last = jobs.last()?;
        String::from_utf8_lossy(&last.body)
            .ends_with("\n99")
            .then_some(jobs.len())
    })
    .await;
    let s = stats(&client, "durable.recent").await.unwrap();
    assert_eq!(s.ready, 10, "no more than max_events kept");
    assert_eq!(bus.stats().durable_dropped, 90, "the dropped ones counted");
    let mut sub = client
        .subscribe_durable("recent", &["ticks.>"], retention)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let e = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(e.payload.as_u64().unwrap());
    }
    assert_eq!(
        got,
        (90..100).collect::<Vec<_>>(),
        "the newest ten, in order"
    );
    sub.cancel().await;
}
