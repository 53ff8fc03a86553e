//! Chaos on the brokers: 20,000 jobs, two consumer processes, one killed
//! with SIGKILL at random moments and restarted, the broker itself
//! restarted mid-run (the embedded bus: killed with SIGKILL twice). At the end every job was processed at least
//! once, duplicates are counted and printed, and the dead-letter queue
//! holds exactly the jobs designed to fail (`n % 1000 == 7`).
//!
//! RabbitMQ: the broker at `MUSTER_TEST_AMQP` is restarted
//! (`rabbitmqctl shutdown`, `rabbitmq-server -detached`). Redis: the test
//! runs its own `redis-server` with an append-only file (`appendfsync
//! always`), killed with SIGKILL and started again on the same files; the
//! shared Redis of `MUSTER_TEST_REDIS` keeps nothing on disk and so is not
//! used (see docs/guarantees.md). NATS: the test runs its own `nats-server
//! -js` with a store directory, killed with SIGKILL and started again on
//! it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use muster::Client;
use muster::queue::{QueueCommand, QueueReply};
use muster_test::{Proc, broker_url};

const JOBS: u32 = 20_000;
/// Jobs enqueued one by one while the broker restarts.
const DURING: u32 = 100;
const WORKER: &str = env!("CARGO_BIN_EXE_muster-test-worker");
const BUS: &str = env!("CARGO_BIN_EXE_muster-test-bus");

fn designed_to_fail(n: u32) -> bool {
    n % 1000 == 7
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn random_below(n: u64) -> u64 {
    muster::id::random_u64() % n.max(1)
}

fn worker(url: &str, queue: &str, record: &Path) -> Proc {
    let mut c = Command::new(WORKER);
    c.args(["--queue", queue, "--record"]).arg(record).args([
        "--prefetch",
        "20",
        "--delay-ms",
        "5",
        // Consumers are killed every 0.1-0.4 s holding 20 jobs each, and
        // each such crash costs those jobs an attempt: a job unlucky five
        // times in a row would be set aside as a poison job. This test
        // counts losses, not poison (that is `poison.rs`).
        "--max-attempts",
        "1000",
        "--bus",
        url,
        "--log-level",
        "error",
    ]);
    Proc::spawn("muster-test-worker", c)
}

async fn dead_jobs(client: &Client, queue: &str) -> Option<Vec<u32>> {
    let reply = client
        .transport()
        .queue_command(&format!("{queue}.dead"), QueueCommand::Peek { count: 1000 })
        .await
        .ok()?;
    let QueueReply::Jobs(jobs) = reply else {
        return None;
    };
    Some(
        jobs.iter()
            .filter_map(|j| serde_json::from_slice::<serde_json::Value>(&j.body).ok())
            .filter_map(|v| v["n"].as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
    )
}

/// Restarts the broker (blocking), once per entry: the first after a fifth
/// of the jobs, the next after three fifths.
type Restarts = Vec<Box<dyn FnOnce() + Send>>;

async fn chaos(label: &str, url: &str, restart_broker: Restarts) {
    let dir = std::env::temp_dir().join(format!(
        "muster-chaos-{label}-{}-{:x}",
        std::process::id(),
        muster::id::random_u64() & 0xffff
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let queue = format!("chaos-{:x}", muster::id::random_u64() & 0xff_ffff);
    let client = Client::new(muster::bus::connect(url, None).await.expect("connect"));
    let started = Instant::now();
    let sends = futures_util::stream::iter(0..JOBS)
        .map(|n| {
            let client = client.clone();
            let queue = queue.clone();
            async move {
                client
                    .enqueue(&queue, &serde_json::json!({ "n": n }))
                    .await
                    .unwrap_or_else(|e| panic!("enqueue {n}: {e}"))
            }
        })
        .buffer_unordered(64)
        .count()
        .await;
    assert_eq!(sends, JOBS as usize);
    say(&format!(
        "chaos {label}: {JOBS} jobs enqueued in {:?}",
        started.elapsed()
    ));

    let mut expected: BTreeSet<u32> = (0..JOBS).filter(|n| !designed_to_fail(*n)).collect();
    let mut expected_dead: BTreeSet<u32> = (0..JOBS).filter(|n| designed_to_fail(*n)).collect();
    // Jobs enqueued while the broker restarts: each is taken (and must be
    // processed) or refused with an error; none may vanish.
    // A refused job may still have been enqueued (the broker took it and
    // the confirm was lost in the restart): its own category, never a loss.
    let mut during: Option<tokio::task::JoinHandle<DuringRestart>> = None;
    let mut refused: Vec<(u32, String)> = Vec::new();
    let record = |name: &str| -> PathBuf { dir.join(format!("{name}.log")) };
    let _steady = worker(url, &queue, &record("steady"));
    let mut victim = worker(url, &queue, &record("victim-0"));
    let mut kills = 0u32;
    let restarts = u32::try_from(restart_broker.len()).unwrap_or(u32::MAX);
    let mut pending_restarts = restart_broker.into_iter();
    let mut restarting: Option<(tokio::task::JoinHandle<()>, Instant, usize)> = None;
    let mut restarted = 0u32;
    let mut next_kill = Instant::now() + Duration::from_millis(100 + random_below(400));
    let deadline = Instant::now() + Duration::from_secs(240);
    let dead = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = muster_test::recorded_numbers(&dir);
        if Instant::now() >= next_kill {
            victim.kill9();
            kills += 1;
            victim = worker(url, &queue, &record(&format!("victim-{kills}")));
            next_kill = Instant::now() + Duration::from_millis(100 + random_below(300));
        }
        // The restart runs beside the kills.
        let due = (JOBS / 5) as usize * (1 + 2 * restarted as usize);
        if seen.len() >= due
            && restarting.is_none()
            && during.is_none()
            && let Some(r) = pending_restarts.next()
        {
            restarting = Some((tokio::task::spawn_blocking(r), Instant::now(), seen.len()));
            let (client, queue) = (client.clone(), queue.clone());
            during = Some(tokio::spawn(async move {
                let (mut taken, mut refused) = (Vec::new(), Vec::new());
                let first = JOBS + DURING * restarted;
                for n in first..first + DURING {
                    match client.enqueue(&queue, &serde_json::json!({ "n": n })).await {
                        Ok(_) => taken.push(n),
                        Err(e) => refused.push((n, e.to_string())),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (taken, refused)
            }));
        }
        if let Some(task) = during.take_if(|t| t.is_finished()) {
            let (taken, no) = task.await.expect("the producer ran");
            for n in taken {
                if designed_to_fail(n) {
                    expected_dead.insert(n);
                } else {
                    expected.insert(n);
                }
            }
            refused.extend(no);
        }
        if let Some((task, t, at)) = restarting.take_if(|(task, _, _)| task.is_finished()) {
            task.await.expect("the broker restarts");
            restarted += 1;
            say(&format!(
                "chaos {label}: broker restarted after {at} jobs (down {:?})",
                t.elapsed()
            ));
        }
        let done = expected.iter().all(|n| seen.contains_key(n));
        if done
            && restarted == restarts
            && restarting.is_none()
            && during.is_none()
            && let Some(dead) = dead_jobs(&client, &queue).await
            && dead.iter().copied().collect::<BTreeSet<u32>>().len() >= expected_dead.len()
        {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "chaos {label}: not done after 240 s: {} of {} jobs processed, broker restarts: {restarted} of {restarts}",
            seen.len(),
            expected.len()
        );
    };
    drop(victim);
    let seen = muster_test::recorded_numbers(&dir);
    let processed: BTreeSet<u32> = seen.keys().copied().collect();
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    let dead_unique: BTreeSet<u32> = dead.iter().copied().collect();
    if restarts > 0 {
        say(&format!(
            "chaos {label}: of {} jobs enqueued during the restarts, {} were refused with an error{}",
            DURING * restarts,
            refused.len(),
            refused
                .first()
                .map_or(String::new(), |(n, e)| format!(" (first: {n}: {e})"))
        ));
    }
    let refused_jobs: BTreeSet<u32> = refused.iter().map(|(n, _)| *n).collect();
    let delivered_anyway: BTreeSet<u32> = processed
        .difference(&expected)
        .chain(dead_unique.difference(&expected_dead))
        .copied()
        .collect();
    if !delivered_anyway.is_empty() {
        say(&format!(
            "chaos {label}: {} refused jobs were enqueued anyway (the broker took them; the confirm was lost): {delivered_anyway:?}",
            delivered_anyway.len()
        ));
    }
    assert!(
        delivered_anyway.is_subset(&refused_jobs),
        "only jobs refused to the producer may appear beyond those taken: {:?}",
        delivered_anyway
            .difference(&refused_jobs)
            .collect::<Vec<_>>()
    );
    say(&format!(
        "chaos {label}: {} jobs processed, {duplicates} duplicate deliveries, {} dead ({} copies), {kills} SIGKILLs, {restarts} broker restarts, {:?} in all",
        processed.len(),
        dead_unique.len(),
        dead.len(),
        started.elapsed()
    ));
    let lost: Vec<_> = expected.difference(&processed).collect();
    assert!(
        lost.is_empty(),
        "every good job processed, none lost: {lost:?}"
    );
    let dead_taken: BTreeSet<u32> = dead_unique.difference(&delivered_anyway).copied().collect();
    assert_eq!(
        dead_taken, expected_dead,
        "the dead-letter queue holds exactly the jobs designed to fail"
    );
    let _ = client
        .transport()
        .queue_command(&format!("{queue}.dead"), QueueCommand::Purge)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Jobs enqueued while the broker restarts: those taken, and those
/// refused (with the error).
type DuringRestart = (Vec<u32>, Vec<(u32, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_survives_kills_and_a_broker_restart() {
    let Some(url) = broker_url("MUSTER_TEST_AMQP", "chaos::rabbitmq") else {
        return;
    };
    chaos("rabbitmq", &url, vec![Box::new(restart_rabbitmq)]).await;
}

/// `rabbitmqctl shutdown`, then `rabbitmq-server -detached`, then wait.
fn restart_rabbitmq() {
    let run = |args: &[&str], program: &str| {
        let status = Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(status.success(), "{program} {args:?}: {status}");
    };
    run(&["shutdown"], "rabbitmqctl");
    run(&["-detached"], "rabbitmq-server");
    // `-detached` returns before the node answers; wait for it.
    let t = Instant::now();
    while !Command::new("rabbitmqctl")
        .args(["await_startup", "--timeout", "10"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "RabbitMQ did not come back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The embedded bus in a process of its own, its jobs in a job log:
/// consumers killed at random (their held jobs go back when their
/// instances miss their heartbeats), and the bus itself killed with
/// SIGKILL twice and started again on its job log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_survives_kills_and_two_bus_crashes() {
    chaos_on_own_server("zmq", "zmq", BUS, 2, |port, dir| {
        vec![
            format!("zmq://127.0.0.1:{port}").into(),
            dir.join("queues.redb").into(),
        ]
    })
    .await;
}

/// A broker process of this test's own on `port`, killed with SIGKILL and
/// started again on the same files.
struct OwnServer {
    program: &'static str,
    args: Vec<std::ffi::OsString>,
    port: u16,
    proc: Option<Proc>,
}

impl OwnServer {
    fn start(&mut self) {
        let mut c = Command::new(self.program);
        c.args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.proc = Some(Proc::spawn(self.program, c));
        // Polls until the other process opens its port (a condition; it
        // has no other way of saying it is up).
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} did not start",
                self.program
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// The chaos run against a broker of the test's own: `args` start it on
/// a port with its files in a directory; the restart is SIGKILL, then
/// the same command on the same files.
async fn chaos_on_own_server(
    label: &str,
    scheme: &str,
    program: &'static str,
    restarts: usize,
    args: impl FnOnce(u16, &Path) -> Vec<std::ffi::OsString>,
) {
    let dir = std::env::temp_dir().join(format!("muster-chaos-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = muster_test::free_port_base();
    let mut server = OwnServer {
        program,
        args: args(port, &dir),
        port,
        proc: None,
    };
    server.start();
    let url = format!("{scheme}://127.0.0.1:{port}");
    let server = std::sync::Arc::new(std::sync::Mutex::new(server));
    let restart_server = |server: std::sync::Arc<std::sync::Mutex<OwnServer>>| {
        Box::new(move || {
            let mut s = server.lock().unwrap();
            s.kill9();
            s.start();
        }) as Box<dyn FnOnce() + Send>
    };
    let restarts = (0..restarts)
        .map(|_| restart_server(server.clone()))
        .collect();
    chaos(label, &url, restarts).await;
    server.lock().unwrap().kill9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_kills_and_a_broker_restart() {
    // Gated like the other Redis tests; the server is this test's own,
    // persisting every write.
    if broker_url("MUSTER_TEST_REDIS", "chaos::redis").is_none() {
        return;
    }
    chaos_on_own_server("redis", "redis", "redis-server", 1, |port, dir| {
        let mut a: Vec<std::ffi::OsString> =
            ["--bind", "127.0.0.1", "--port"].map(Into::into).to_vec();
        a.push(port.to_string().into());
        a.extend(
            [
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
            ]
            .map(Into::into),
        );
        a.push(dir.into());
        a
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_survives_kills_and_a_broker_restart() {
    // Gated like the other NATS tests; the server is this test's own,
    // with a store directory.
    if broker_url("MUSTER_TEST_NATS", "chaos::nats").is_none() {
        return;
    }
    chaos_on_own_server("nats", "nats", "nats-server", 1, |port, dir| {
        let mut a: Vec<std::ffi::OsString> = ["-a", "127.0.0.1", "-p"].map(Into::into).to_vec();
        a.push(port.to_string().into());
        a.extend(["-js", "-sd"].map(Into::into));
        a.push(dir.into());
        a
    })
    .await;
}
