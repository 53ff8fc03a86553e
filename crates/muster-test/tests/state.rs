//! Replicated state with real processes: an owner churning a delta state,
//! readers behind a link that drops and duplicates change messages, late
//! joiners, restarted readers and owners, persistence.

use std::time::{Duration, Instant};

use muster::{CallOptions, Client};
use muster_test::{Proc, bus_and_client, eventually, wait_registered};
use serde_json::Value;

const STATE: &str = env!("CARGO_BIN_EXE_muster-test-state");
const WAIT: Duration = Duration::from_secs(30);
const FAULTS: &str = "drop=0.1,dup=0.05";

fn owner(url: &str, id: &str, args: &[&str]) -> Proc {
    let mut c = std::process::Command::new(STATE);
    c.args(["-m", "--role", "owner", "--bus", url, "--log-level", "warn"])
        .args(args)
        .env("MUSTER_INSTANCE", id);
    Proc::spawn(id, c)
}

fn reader(url: &str, id: &str) -> Proc {
    let mut c = std::process::Command::new(STATE);
    c.args(["--role", "reader", "--bus", url, "--log-level", "warn"])
        .env("MUSTER_INSTANCE", id)
        .env("MUSTER_STATE_FAULTS", FAULTS);
    Proc::spawn(id, c)
}

async fn digest(client: &Client, service: &str, instance: &str) -> Option<Value> {
    client
        .call_with::<_, Value>(
            &format!("{service}.hash"),
            &serde_json::json!({}),
            CallOptions::default()
                .instance(instance)
                .timeout(Duration::from_secs(2)),
        )
        .await
        .ok()
}

async fn owner_seq(client: &Client, id: &str) -> u64 {
    digest(client, "stateowner", id)
        .await
        .and_then(|d| d["seq"].as_u64())
        .unwrap_or(0)
}

/// Waits until every reader equals the owner (hash, length, sequence) and
/// is not stale; returns how long that took.
async fn converged(client: &Client, owner_id: &str, readers: &[&str]) -> Duration {
    let start = Instant::now();
    let want = digest(client, "stateowner", owner_id)
        .await
        .expect("owner answers");
    eventually(WAIT, "every reader equal to the owner", || async {
        for r in readers {
            let d = digest(client, "statereader", r).await?;
            let same =
                d["hash"] == want["hash"] && d["len"] == want["len"] && d["seq"] == want["seq"];
            if !same || d["stale"] != false {
                return None;
            }
        }
        Some(())
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_converge_despite_loss_duplicates_a_late_joiner_and_a_restart() {
    let (_bus, client, url) = bus_and_client().await;
    let _a = reader(&url, "reader-a");
    let mut b = reader(&url, "reader-b");
    wait_registered(&client, "statereader", 2).await;
    let _owner = owner(
        &url,
        "owner-1",
        &["--changes", "100000", "--pause_us", "2000"],
    );
    wait_registered(&client, "stateowner", 1).await;

    eventually(WAIT, "30,000 changes", || async {
        (owner_seq(&client, "owner-1").await >= 30_000).then_some(())
    })
    .await;
    let _c = reader(&url, "reader-c"); // joins late
    eventually(WAIT, "50,000 changes", || async {
        (owner_seq(&client, "owner-1").await >= 50_000).then_some(())
    })
    .await;
    b.kill9(); // restarted half way
    let _b2 = reader(&url, "reader-b2");

    eventually(Duration::from_secs(120), "all 100,000 changes", || async {
        (owner_seq(&client, "owner-1").await == 100_000).then_some(())
    })
    .await;
    let took = converged(&client, "owner-1", &["reader-a", "reader-b2", "reader-c"]).await;
    println!("converged {took:?} after the last change (faults {FAULTS})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_follow_an_owner_restarted_mid_stream() {
    let (_bus, client, url) = bus_and_client().await;
    let _a = reader(&url, "reader-a");
    let _b = reader(&url, "reader-b");
    wait_registered(&client, "statereader", 2).await;
    let mut first = owner(
        &url,
        "owner-1",
        &["--changes", "50000", "--pause_us", "5000"],
    );
    eventually(WAIT, "5,000 changes", || async {
        (owner_seq(&client, "owner-1").await >= 5_000).then_some(())
    })
    .await;
    first.kill9();
    // A new owner, no persistence: a new epoch and another history.
    let _second = owner(&url, "owner-2", &["--changes", "3000", "--seed", "99"]);
    eventually(WAIT, "the new owner's 3,000 changes", || async {
        (owner_seq(&client, "owner-2").await == 3_000).then_some(())
    })
    .await;
    converged(&client, "owner-2", &["reader-a", "reader-b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_without_its_owner_serves_its_last_value_as_stale() {
    let (_bus, client, url) = bus_and_client().await;
    let _a = reader(&url, "reader-a");
    wait_registered(&client, "statereader", 1).await;
    let mut o = owner(&url, "owner-1", &["--changes", "500"]);
    eventually(WAIT, "500 changes", || async {
        (owner_seq(&client, "owner-1").await == 500).then_some(())
    })
    .await;
    converged(&client, "owner-1", &["reader-a"]).await;
    let before = digest(&client, "statereader", "reader-a").await.unwrap();
    o.kill9();
    let after = eventually(WAIT, "the reader reports stale", || async {
        let d = digest(&client, "statereader", "reader-a").await?;
        (d["stale"] == true).then_some(d)
    })
    .await;
    assert_eq!(after["hash"], before["hash"], "the last value is kept");
    assert_eq!(after["seq"], 500);
}

/// An owner persisting to `target` applies 2,000 changes, is killed, and
/// a new owner on the same store resumes at 2,000 and goes on to 2,500;
/// the reader follows without a reset.
async fn persisted_owner_resumes(target: &str) {
    let (_bus, client, url) = bus_and_client().await;
    let state = format!("items{}", std::process::id());
    let _a = {
        let mut c = std::process::Command::new(STATE);
        c.args([
            "--role",
            "reader",
            "--state",
            &state,
            "--bus",
            &url,
            "--log-level",
            "warn",
        ])
        .env("MUSTER_INSTANCE", "reader-a");
        Proc::spawn("reader-a", c)
    };
    wait_registered(&client, "statereader", 1).await;
    let args = ["--changes", "2000", "--persist", target, "--state", &state];
    let mut o = owner(&url, "owner-1", &args);
    eventually(WAIT, "2,000 changes", || async {
        (owner_seq(&client, "owner-1").await == 2_000).then_some(())
    })
    .await;
    converged(&client, "owner-1", &["reader-a"]).await;
    o.kill9();
    let args = [
        "--changes",
        "500",
        "--seed",
        "3",
        "--persist",
        target,
        "--state",
        &state,
    ];
    let _o2 = owner(&url, "owner-2", &args);
    // The second owner's first answer is already 2,000 or more: no reset.
    let first = eventually(WAIT, "the new owner", || async {
        digest(&client, "stateowner", "owner-2").await
    })
    .await;
    assert!(first["seq"].as_u64().unwrap() >= 2_000, "{first}");
    eventually(WAIT, "2,500 changes", || async {
        (owner_seq(&client, "owner-2").await == 2_500).then_some(())
    })
    .await;
    converged(&client, "owner-2", &["reader-a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_owner_resumes_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let file = dir.join("items.state");
    persisted_owner_resumes(file.to_str().unwrap()).await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().count() > 1, "changes are appended to the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_owner_resumes_from_redis() {
    if let Some(url) =
        muster_test::broker_url("MUSTER_TEST_REDIS", "a_persisted_owner_resumes_from_redis")
    {
        persisted_owner_resumes(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_owner_resumes_from_nats() {
    if let Some(url) =
        muster_test::broker_url("MUSTER_TEST_NATS", "a_persisted_owner_resumes_from_nats")
    {
        // A prefix of its own: streams outlive the test.
        let prefix = format!("t{:x}", muster::id::random_u64() & 0xff_ffff);
        persisted_owner_resumes(&format!("{url}?prefix={prefix}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_owner_resumes_from_postgres() {
    if let Some(url) = muster_test::broker_url(
        "MUSTER_TEST_POSTGRES",
        "a_persisted_owner_resumes_from_postgres",
    ) {
        persisted_owner_resumes(&url).await;
    }
}
