//! The host as a user runs it: `muster up` with a manifest, real service
//! processes, `muster ctl`, `kill -9`, SIGTERM, and the process table.
//!
//! A long file on purpose: one test binary for everything the host does
//! (one build, one link, tests run side by side), each test standing alone.

use std::process::{Command, Stdio};
use std::time::Duration;

use muster::{Client, Subscription};
use muster_test::host::{Host, WAIT, free_http, http, is, next, tempdir};
use muster_test::{Proc, eventually, free_bus_url};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

/// Every process whose environment names `transaction` (services and
/// anything they started).
fn processes_of(transaction: &str) -> Vec<u32> {
    let needle = format!("MUSTER_TRANSACTION={transaction}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let is_zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !is_zombie && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn echo(name: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nrun = [\"{MUSTER}\", \"__service\", \"echo\", \"--log-level\", \"warn\"]\nbackoff = \"100ms\"\n{extra}\n"
    )
}

fn sh(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nrun = [\"/bin/sh\", \"-c\", \"{script}\"]\nready = \"spawned\"\nbackoff = \"50ms\"\nstop_timeout = \"2s\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_is_followed_by_a_restart_and_a_new_started() {
    let host = Host::up(
        MUSTER,
        "kill9",
        &format!("[context]\nname = \"k\"\n{}", echo("echo", "instances = 2")),
    )
    .await;
    let mut events = host.events().await;
    let pid = host.wait_state("echo", 0, "running").await.unwrap();
    host.wait_state("echo", 1, "running").await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let failed = next(&mut events, "echo failed", is("echo", "failed")).await;
    assert_eq!(failed["signal"], 9);
    assert_eq!(failed["pid"], pid);
    let started = next(&mut events, "echo started again", is("echo", "started")).await;
    assert_eq!(started["slot"], 0);
    assert_eq!(started["restarts"], 1);
    assert_ne!(started["pid"], pid);
    let (new_pid, state, restarts) = host.slot("echo", 0);
    assert_eq!((state.as_str(), restarts), ("running", 1));
    assert_ne!(new_pid, Some(pid));
    assert_eq!(
        host.slot("echo", 1).2,
        0,
        "the other instance was not touched"
    );
    // and the replacement serves calls
    let client = Client::connect(&host.bus).await.unwrap();
    let r: Value = client
        .call("echo.shout", &json!({"text": "x"}))
        .await
        .unwrap();
    assert_eq!(r["text"], "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_is_not_restarted_after_exit_0_and_temporary_never() {
    let manifest = format!(
        "[context]\nname = \"t\"\n{}{}{}",
        sh("tr", "sleep 0.2", "restart = \"transient\""),
        sh("tmp", "sleep 0.2; exit 3", "restart = \"temporary\""),
        sh("trfail", "sleep 0.2; exit 4", "restart = \"transient\""),
    );
    let host = Host::up(MUSTER, "transient", &manifest).await;
    host.wait_state("tr", 0, "exited").await;
    host.wait_state("tmp", 0, "failed").await;
    // transient does restart a failure
    eventually(WAIT, "trfail restarted", || async {
        (host.slot("trfail", 0).2 >= 1).then_some(())
    })
    .await;
    // Nothing must happen to the other two: a restart would come within
    // their 100 ms backoff, so half a second of nothing is the evidence
    // (there is no event to wait for).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(host.slot("tr", 0), (None, "exited".into(), 0));
    assert_eq!(host.slot("tmp", 0), (None, "failed".into(), 0));
}

async fn kill_middle(strategy: &str) -> [(Option<u32>, Option<u32>); 3] {
    let manifest = format!(
        "[context]\nname = \"s\"\nstrategy = \"{strategy}\"\n{}{}{}",
        sh("a", "sleep 1000", ""),
        sh("b", "sleep 1000", ""),
        sh("c", "sleep 1000", ""),
    );
    let host = Host::up(MUSTER, strategy, &manifest).await;
    let before: Vec<Option<u32>> = ["a", "b", "c"].iter().map(|s| host.slot(s, 0).0).collect();
    assert!(before.iter().all(Option::is_some));
    kill(Pid::from_raw(before[1].unwrap() as i32), Signal::SIGKILL).unwrap();
    eventually(WAIT, "b restarted", || async {
        let (pid, state, _) = host.slot("b", 0);
        (state == "running" && pid != before[1]).then_some(())
    })
    .await;
    for s in ["a", "c"] {
        host.wait_state(s, 0, "running").await;
    }
    let after: Vec<Option<u32>> = ["a", "b", "c"].iter().map(|s| host.slot(s, 0).0).collect();
    [
        (before[0], after[0]),
        (before[1], after[1]),
        (before[2], after[2]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_restarts_every_service() {
    let r = kill_middle("one_for_all").await;
    assert!(r.iter().all(|(b, a)| b != a), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_service_and_those_after_it() {
    let r = kill_middle("rest_for_one").await;
    assert_eq!(r[0].0, r[0].1, "a is left alone: {r:?}");
    assert!(r[1].0 != r[1].1 && r[2].0 != r[2].1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_restart_budget_the_context_fails_and_stops() {
    let manifest = format!(
        "[context]\nname = \"b\"\nmax_restarts = 2\nwithin_secs = 60\n{}{}",
        sh("crashy", "sleep 0.1; exit 1", ""),
        sh("bystander", "sleep 1000", ""),
    );
    let host = Host::up(MUSTER, "budget", &manifest).await;
    let mut events = host.events().await;
    let failed = next(&mut events, "context failed", |v| {
        v["event"] == "failed" && v.get("service").is_none()
    })
    .await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("more than 2 restarts within 60s"),
        "{reason}"
    );
    let st = host.status();
    assert_eq!(st["transactions"][0]["state"], "failed");
    assert_eq!(
        host.slot("bystander", 0).1,
        "stopped",
        "the whole context stopped"
    );
    assert!(processes_of(&host.transaction()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_trigger_fires_once_per_event() {
    let step = |name: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nrun = [\"{MUSTER}\", \"__service\", \"{name}\", \"-m\", \"--step_ms\", \"300\"]\nrestart = \"transient\"\n{extra}\n"
        )
    };
    let manifest = format!(
        "[context]\nname = \"chain\"\n{}{}{}{}",
        step(
            "stand",
            "on_update = { start = [\"walk\"] }\non_start = { start = [\"drink_coffee\"] }"
        ),
        step("walk", "autostart = false\non_exit = { start = [\"run\"] }"),
        step("drink_coffee", "autostart = false"),
        step("run", "autostart = false\non_exit = { stop = [\"walk\"] }"),
    );
    let host = Host::up(MUSTER, "triggers", &manifest).await;
    let mut events = host.events().await;
    let _ = next(&mut events, "run exited", is("run", "exited")).await;
    // Nothing more must happen: a trigger that fired twice would show
    // within milliseconds; a second of nothing is the evidence (there is
    // no event to wait for).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = host.status();
    for s in st["transactions"][0]["services"].as_array().unwrap() {
        let i = &s["instances"][0];
        assert_eq!(i["state"], "exited", "{s}");
        assert_eq!(i["restarts"], 0, "{s}");
    }
    // Each service was started exactly once: one log marker each.
    let txn = host.transaction();
    for s in ["stand", "walk", "drink_coffee", "run"] {
        let log = std::fs::read_to_string(host.dir.join(format!(".muster/logs/{txn}/{s}.0.log")))
            .unwrap();
        assert_eq!(log.matches("--- muster: starting").count(), 1, "{s}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_the_token_is_refused_and_logged() {
    let host = Host::up(
        MUSTER,
        "token",
        &format!("[context]\nname = \"c\"\n{}", sh("s", "sleep 1000", "")),
    )
    .await;
    let pid = host.slot("s", 0).0;
    let wrong = host.dir.join("wrong-token");
    std::fs::write(&wrong, "0000").unwrap();
    let o = host.ctl(&["--token-file", wrong.to_str().unwrap(), "stop"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unauthorized"), "{err}");
    let o = Command::new(MUSTER)
        .args(["call", "muster.host.stop", "{}", "--bus", &host.bus])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("-32004"), "{said}");
    assert_eq!(
        host.slot("s", 0),
        (pid, "running".into(), 0),
        "nothing stopped"
    );
    assert!(host.log().contains("control request refused"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(host.dir.join(".muster/token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // with the token it works
    let o = host.ctl(&["stop", "s"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    host.wait_state("s", 0, "stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_everything_in_reverse_order_and_leaves_no_process() {
    let manifest = format!(
        "[context]\nname = \"o\"\n{}{}{}",
        echo("db", ""),
        echo("web", "after = [\"db\"]\ninstances = 2"),
        sh(
            "worker",
            "sleep 1000 & sleep 1000 & wait",
            "after = [\"web\"]"
        ),
    );
    let mut host = Host::up(MUSTER, "sigterm", &manifest).await;
    host.wait_state("worker", 0, "running").await;
    let txn = host.transaction();
    assert!(
        processes_of(&txn).len() >= 6,
        "db, 2 web, sh and its two sleeps"
    );
    let mut events = host.events().await;
    host.proc.signal(Signal::SIGTERM);
    let mut order = Vec::new();
    while order.len() < 4 {
        let e = next(&mut events, "stopped events", |v| {
            v["event"] == "stopped" && v.get("service").is_some()
        })
        .await;
        order.push(e["service"].as_str().unwrap().to_owned());
    }
    assert_eq!(order, ["worker", "web", "web", "db"]);
    let status = host.proc.wait_exit(WAIT);
    assert!(status.success(), "{status:?}\n{}", host.log());
    assert_eq!(
        processes_of(&txn),
        Vec::<u32>::new(),
        "no process left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_takes_its_children_and_brings_the_transaction_back() {
    let (host, txn) = children_die_with_a_killed_host(MUSTER, "persist").await;
    // start again in the same directory: the same transaction comes back
    let dir = host.dir.clone();
    let bus = host.bus.clone();
    std::mem::forget(host); // its process is gone; keep the directory
    let host = Host::start(MUSTER, dir, bus).await;
    assert_eq!(host.transaction(), txn);
    host.wait_state("s", 1, "running").await;
    eventually(WAIT, "4 processes again", || async {
        (processes_of(&txn).len() == 4).then_some(())
    })
    .await;
}

/// Starts a host with `muster`, two shells that each start a `sleep`,
/// then `kill -9`s the host: every one of them must die with it. Returns
/// the dead host (its directory kept until it is dropped) and its
/// transaction.
async fn children_die_with_a_killed_host(muster: &str, tag: &str) -> (Host, String) {
    let manifest = format!(
        "[context]\nname = \"p\"\n{}",
        sh("s", "sleep 1000", "instances = 2")
    );
    let mut host = Host::up(muster, tag, &manifest).await;
    let txn = host.transaction();
    host.wait_state("s", 1, "running").await;
    // two shells, each with its sleep
    eventually(WAIT, "4 processes", || async {
        (processes_of(&txn).len() == 4).then_some(())
    })
    .await;
    host.proc.kill9();
    eventually(WAIT, "children die with the host", || async {
        processes_of(&txn).is_empty().then_some(())
    })
    .await;
    (host, txn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_start_through_the_launcher_beside_muster_and_die_with_the_host() {
    // What the other tests run: cargo builds `muster-launch` beside `muster`.
    let small = std::path::Path::new(MUSTER).with_file_name("muster-launch");
    assert!(small.is_file(), "no {}", small.display());

    // `muster` alone in a directory (a hard link, so that the host finds
    // itself there): children start through `muster __exec`.
    let bin = tempdir("launcher-bin");
    let muster = bin.join("muster");
    if std::fs::hard_link(MUSTER, &muster).is_err() {
        std::fs::copy(MUSTER, &muster).unwrap();
    }
    let muster = muster.to_str().unwrap().to_owned();
    children_die_with_a_killed_host(&muster, "launcher-exec").await;

    // A `muster-launch` beside it, which records each start, is used
    // instead.
    let record = bin.join("launched");
    let script = bin.join("muster-launch");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{muster}' __exec \"$@\"\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    children_die_with_a_killed_host(&muster, "launcher-small").await;
    let launched = std::fs::read_to_string(&record).unwrap_or_default();
    assert_eq!(launched.lines().count(), 2, "{launched:?}");
    assert!(
        launched
            .lines()
            .all(|l| l.ends_with(" /bin/sh -c sleep 1000")),
        "{launched:?}"
    );
    std::fs::remove_dir_all(&bin).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_run_side_by_side_and_are_addressed_by_id() {
    let manifest = format!(
        "[context]\nname = \"x\"\nboot = false\n{}",
        sh("s", "exec sleep 1000", "")
    );
    let host = Host::up(MUSTER, "txns", &manifest).await;
    assert_eq!(host.status()["transactions"], json!([]));
    let o = host.ctl(&["start", "--transaction", "AAAAAAAAAAAAAAAAAAAA"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = host.ctl(&["start"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let second = out.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(second.len(), 20);
    assert!(
        second
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    );
    eventually(WAIT, "two transactions with a process each", || async {
        (processes_of("AAAAAAAAAAAAAAAAAAAA").len() == 1 && processes_of(&second).len() == 1)
            .then_some(())
    })
    .await;
    let o = host.ctl(&["stop"]);
    assert!(!o.status.success(), "ambiguous without --transaction");
    let o = host.ctl(&["exit", "-t", "AAAAAAAAAAAAAAAAAAAA"]);
    assert!(o.status.success());
    eventually(WAIT, "the first is gone", || async {
        (processes_of("AAAAAAAAAAAAAAAAAAAA").is_empty()
            && host.status()["transactions"].as_array().unwrap().len() == 1)
            .then_some(())
    })
    .await;
    assert_eq!(processes_of(&second).len(), 1, "the second runs on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_only_the_difference() {
    let base = format!(
        "[context]\nname = \"r\"\n{}{}{}",
        sh("keep", "sleep 1000", ""),
        sh("change", "sleep 1000", ""),
        sh("drop", "sleep 1000", ""),
    );
    let host = Host::up(MUSTER, "reload", &base).await;
    let keep = host.slot("keep", 0).0;
    let change = host.slot("change", 0).0;
    let text = std::fs::read_to_string(host.dir.join("muster.toml")).unwrap();
    let text = text
        .replace(
            &sh("drop", "sleep 1000", ""),
            &sh("added", "sleep 1000", ""),
        )
        .replace(
            &sh("change", "sleep 1000", ""),
            &sh("change", "sleep 999", ""),
        );
    std::fs::write(host.dir.join("muster.toml"), text).unwrap();
    let o = host.ctl(&["reload"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let txn = host.transaction();
    assert_eq!(report["unchanged"], json!([format!("{txn}/keep")]));
    assert_eq!(report["restarted"], json!([format!("{txn}/change")]));
    assert_eq!(report["stopped"], json!([format!("{txn}/drop")]));
    assert_eq!(report["started"], json!([format!("{txn}/added")]));
    host.wait_state("added", 0, "running").await;
    eventually(WAIT, "change restarted", || async {
        let (pid, s, _) = host.slot("change", 0);
        (s == "running" && pid != change).then_some(())
    })
    .await;
    assert_eq!(host.slot("keep", 0).0, keep);
    let names: Vec<Value> = host.status()["transactions"][0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("keep"), json!("change"), json!("added")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_captured_per_instance() {
    let host = Host::up(
        MUSTER,
        "logs",
        &format!(
            "[context]\nname = \"l\"\n{}",
            sh(
                "talker",
                "echo hello from $MUSTER_INSTANCE; echo oops >&2; sleep 1000",
                "instances = 2"
            )
        ),
    )
    .await;
    let text = eventually(WAIT, "both instances' output", || async {
        let o = host.ctl(&["logs", "talker"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        (out.matches("hello from talker-").count() == 2 && out.matches("oops").count() == 2)
            .then_some(out)
    })
    .await;
    assert!(text.contains("talker.0| hello from talker-0-"), "{text}");
    assert!(text.contains("talker.1| hello from talker-1-"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_logs_rotate_and_ctl_logs_follows_across_rotations() {
    // 50 MB to stdout once told to, under a 1 MB limit with 3 files kept.
    let host = Host::up(
        MUSTER,
        "log-rotation",
        &format!(
            "[host]\nhttp = \"off\"\nlog_max_size = \"1MB\"\nlog_keep = 3\n\n[context]\nname = \"r\"\n{}",
            sh(
                "flood",
                "while [ ! -e go ]; do sleep 0.1; done; yes 'a line of output, again and again' | head -c 50000000; echo; echo THE-END; sleep 1000",
                ""
            )
        ),
    )
    .await;
    host.wait_state("flood", 0, "running").await;
    let mut follow = Command::new(MUSTER)
        .args([
            "ctl", "logs", "-f", "--lines", "1", "flood", "--bus", &host.bus,
        ])
        .current_dir(&host.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("--- muster: starting") || line.contains("THE-END") {
                let _ = seen_tx.send(line);
            }
        }
    });
    let first = seen.recv_timeout(WAIT).expect("ctl logs -f prints the log");
    assert!(first.contains("--- muster: starting"), "{first}");
    // The instance runs in the manifest's directory.
    std::fs::write(host.dir.join("go"), "").unwrap();
    let logs = host.dir.join(".muster/logs");
    let end = seen
        .recv_timeout(Duration::from_secs(120))
        .expect("ctl logs -f followed to the end, across every rotation");
    assert!(end.contains("flood.0| THE-END"), "{end}");
    let _ = follow.kill();
    let _ = follow.wait();

    let transaction = host.transaction();
    let dir = logs.join(transaction);
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("flood.0.log"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "the current file and 3 kept: {files:?}");
    for (name, len) in &files {
        assert!(*len <= (1 << 20) + (64 << 10), "{name}: {len} bytes");
    }
}

/// systemd's side of `Type=notify` (deploy/muster.service): a datagram
/// socket named by NOTIFY_SOCKET, on which the host says READY=1 once it
/// answers, and STOPPING=1 when it begins to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempdir("sd-notify");
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let bus = free_bus_url();
    std::fs::write(
        dir.join("muster.toml"),
        format!(
            "[host]\nbus = \"{bus}\"\nhttp = \"off\"\n\n[context]\nname = \"n\"\n{}",
            echo("echo", "")
        ),
    )
    .unwrap();
    let mut c = Command::new(MUSTER);
    c.args(["up", "muster.toml"])
        .current_dir(&dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut up = Proc::spawn("muster up under a NOTIFY_SOCKET", c);
    let receive = |what: &str| {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {what} from the host: {e}"));
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.lines().any(|l| l == what) {
                return text;
            }
        }
    };
    let ready = receive("READY=1");
    assert!(ready.contains("STATUS=running on zmq://"), "{ready}");
    // Ready means it answers: ctl status works at once.
    let o = Command::new(MUSTER)
        .args(["ctl", "status", "--json", "--bus", &bus])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    up.signal(Signal::SIGTERM);
    receive("STOPPING=1");
    assert!(up.wait_exit(WAIT).success());
}

#[test]
fn an_invalid_manifest_is_refused_with_file_line_and_key() {
    let dir = tempdir("invalid");
    let path = dir.join("muster.toml");
    std::fs::write(&path, "[context]\nname = \"x\"\n\n[[service]]\nname = \"a\"\nrun = [\"a\"]\nrestart = \"sometimes\"\n").unwrap();
    let o = Command::new(MUSTER)
        .args(["up", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("muster.toml:7: service[0].restart: unknown variant"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_status_and_balances_echo() {
    let dir = tempdir("demo");
    let bus = free_bus_url();
    let mut c = Command::new(MUSTER);
    c.args(["demo", "--bus", &bus, "--http", "off"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut demo = Proc::spawn("muster demo", c);
    let ctl = |args: &[&str]| {
        Command::new(MUSTER)
            .arg("ctl")
            .args(args)
            .args(["--bus", &bus])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let table = eventually(WAIT, "ctl status lists every service", || async {
        let o = ctl(&["status"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        (o.status.success() && out.matches(" running ").count() >= 3).then_some(out)
    })
    .await;
    for s in ["echo", "stand", "walk", "drink_coffee", "run"] {
        assert!(table.contains(&format!("  {s} ")), "{s} missing:\n{table}");
    }
    assert!(
        table.contains("PID") && table.contains("RESTARTS"),
        "{table}"
    );
    for _ in 0..20 {
        let o = Command::new(MUSTER)
            .args([
                "call",
                "echo.shout",
                r#"{"text":"hi","times":2}"#,
                "--bus",
                &bus,
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            r#"{"text":"hihi"}"#
        );
    }
    let client = Client::connect(&bus).await.unwrap();
    let served: Vec<u64> = client
        .stats(Some("echo"))
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .map(|r| r.methods.get("shout").map_or(0, |m| m.num_requests))
        .collect();
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(
        served.iter().all(|n| *n >= 5),
        "both instances serve calls: {served:?}"
    );
    demo.signal(Signal::SIGINT);
    assert!(demo.wait_exit(WAIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_once_runs_one_cycle() {
    let dir = tempdir("demo-once");
    let o = Command::new(MUSTER)
        .args(["demo", "--once", "--bus", &free_bus_url(), "--http", "off"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains(r#"-> {"text":"hihi"}"#), "{out}");
    for line in [
        "stand         updated",
        "walk          started",
        "run           exited",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_services_run_to_completion_and_their_runs_are_recorded() {
    let manifest = format!(
        "[context]\nname = \"cron\"\n{}{}",
        "[[service]]\nname = \"ok\"\nrun = [\"/bin/sh\", \"-c\", \"exit 0\"]\nready = \"spawned\"\nschedule = \"* * * * * *\"\n",
        "[[service]]\nname = \"bad\"\nrun = [\"/bin/sh\", \"-c\", \"exit 3\"]\nready = \"spawned\"\nschedule = \"every 1s\"\n",
    );
    let host = Host::up(MUSTER, "schedule", &manifest).await;
    let st = eventually(WAIT, "three runs each", || async {
        let st = host.status();
        let svcs = st["transactions"][0]["services"].as_array()?.clone();
        svcs.iter()
            .all(|s| s["schedule"]["runs"].as_u64().unwrap_or(0) >= 3)
            .then_some(st)
    })
    .await;
    let svcs = st["transactions"][0]["services"].as_array().unwrap();
    let ok = &svcs[0]["schedule"];
    assert_eq!(ok["failed"], 0, "{ok}");
    assert_eq!(ok["recent"][0]["outcome"], "exit code 0");
    let bad = &svcs[1]["schedule"];
    assert_eq!(bad["succeeded"], 0, "{bad}");
    assert_eq!(bad["recent"][0]["outcome"], "exit code 3");
    assert_eq!(
        svcs[1]["instances"][0]["restarts"], 0,
        "never restarted by a policy"
    );
    let fires: Vec<&str> = ok["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fire"].as_str().unwrap())
        .collect();
    let mut unique = fires.clone();
    unique.dedup();
    assert_eq!(fires, unique, "one run per fire time");
    let o = host.ctl(&["status"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("schedule * * * * * *: next"), "{table}");
    assert!(table.contains("last: exit code 3"), "{table}");
}

// ---- monitoring -----------------------------------------------------------

/// The test service (built by `cargo test --workspace`), beside `muster`.
fn test_service() -> String {
    muster_test::host::test_service(MUSTER)
}

fn hog(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"testsvc\"\nrun = [\"{}\", \"--log-level\", \"warn\"]\nenv = {{ MUSTER_GREETING = \"hi\" }}\nbackoff = \"100ms\"\n{extra}\n",
        test_service()
    )
}

fn kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn next_sample(samples: &mut Subscription) -> Value {
    let e = tokio::time::timeout(WAIT, samples.recv())
        .await
        .expect("a sample")
        .expect("samples");
    e.payload
}

fn testsvc_process(sample: &Value) -> Value {
    sample["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == "testsvc")
        .unwrap()["process"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_match_the_kernel_and_show_50_mb_soon() {
    let manifest = format!(
        "[host]\nhttp = \"off\"\nmonitor_every = \"200ms\"\n[context]\nname = \"m\"\n{}",
        hog("")
    );
    let host = Host::up(MUSTER, "monitor", &manifest).await;
    let pid = host.wait_state("testsvc", 0, "running").await.unwrap();
    let client = Client::connect(&host.bus).await.unwrap();
    let mut samples = client
        .subscribe(&[&format!("muster.monitor.{}", host.transaction())])
        .await
        .unwrap();
    // Connections are counted every 5 s: wait for a count taken after the
    // instance connected.
    let mut p = testsvc_process(&next_sample(&mut samples).await);
    for _ in 0..60 {
        if p["connections"]["tcp"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        p = testsvc_process(&next_sample(&mut samples).await);
    }
    assert_eq!(p["pid"], pid);
    let rss = p["rss"].as_u64().unwrap();
    let kernel_rss = kib(pid, "VmRSS:") * 1024;
    assert!(
        rss.abs_diff(kernel_rss) < 4 << 20,
        "sampled {rss}, kernel {kernel_rss}"
    );
    assert_eq!(p["vms"].as_u64().unwrap(), kib(pid, "VmSize:") * 1024);
    assert_eq!(p["threads"].as_u64().unwrap(), kib(pid, "Threads:"));
    assert!(p["open_files"].as_u64().unwrap() > 3);
    assert!(
        p["connections"]["tcp"].as_u64().unwrap() >= 2,
        "bus and RPC sockets: {p}"
    );
    assert!(p["maps"]["count"].as_u64().unwrap() > 10);

    let held: u64 = client
        .call("testsvc.alloc", &json!({"mb": 50}))
        .await
        .unwrap();
    assert_eq!(held, 50);
    // What the kernel says now, against what the monitor reports next. The
    // baseline above may have held memory the allocator has since given
    // back, so the growth is checked against the kernel, not the baseline.
    let kernel_after = kib(pid, "VmRSS:") * 1024;
    assert!(
        kernel_after >= rss + (40 << 20),
        "the allocation shows in the kernel: {rss} -> {kernel_after}"
    );
    let mut seen = Vec::new();
    for _ in 0..10 {
        let p = testsvc_process(&next_sample(&mut samples).await);
        seen.push(p["rss"].as_u64().unwrap());
        if seen.last().is_some_and(|r| *r + (4 << 20) >= kernel_after) {
            break;
        }
    }
    assert!(
        seen.iter().any(|r| *r + (4 << 20) >= kernel_after),
        "a sample shows the kernel's {kernel_after} after 50 MB: {seen:?}"
    );
    // The method statistics are joined in (refreshed every 5 s).
    let mut joined = false;
    for _ in 0..60 {
        let s = next_sample(&mut samples).await;
        let i = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["service"] == "testsvc")
            .unwrap()
            .clone();
        if i["methods"]["alloc"]["num_requests"] == 1 {
            joined = true;
            break;
        }
    }
    assert!(joined, "alloc's count in a sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_over_its_memory_limit_is_restarted_with_the_reason() {
    let manifest = format!(
        "[host]\nhttp = \"off\"\nmonitor_every = \"200ms\"\n[context]\nname = \"m\"\n{}",
        hog("max_rss = \"40MB\"")
    );
    let host = Host::up(MUSTER, "limit", &manifest).await;
    host.wait_state("testsvc", 0, "running").await;
    let mut events = host.events().await;
    let client = Client::connect(&host.bus).await.unwrap();
    let _: Value = client
        .call("testsvc.alloc", &json!({"mb": 50}))
        .await
        .unwrap();
    let failed = next(&mut events, "testsvc failed", is("testsvc", "failed")).await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("resident memory") && reason.contains("limit of 40 MB"),
        "{reason}"
    );
    let started = next(
        &mut events,
        "testsvc started again",
        is("testsvc", "started"),
    )
    .await;
    assert_eq!(started["restarts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_serves_metrics_the_gateway_and_openapi() {
    let addr = free_http();
    let manifest = format!(
        "[host]\nhttp = \"{addr}\"\nmonitor_every = \"200ms\"\n[context]\nname = \"web\"\n{}",
        echo("echo", "")
    );
    let host = Host::up(MUSTER, "http", &manifest).await;
    host.wait_state("echo", 0, "running").await;
    let token = std::fs::read_to_string(host.dir.join(".muster/token")).unwrap();
    let token = token.trim();
    // Instance details are the token's to see.
    let (code, _) = http("GET", &addr, "/metrics", None, "");
    assert_eq!(code, 401, "metrics need the token");
    let (code, _) = http("GET", &addr, "/api/status", None, "");
    assert_eq!(code, 401, "status needs the token");
    let metrics = eventually(WAIT, "metrics with the echo instance", || async {
        let (code, body) = http("GET", &addr, "/metrics", Some(token), "");
        (code == 200
            && body.contains("muster_instance_resident_bytes{")
            && body.contains("service=\"echo\""))
        .then_some(body)
    })
    .await;
    // Every series names its host, so that a fleet's hosts scrape into one
    // view.
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("muster_"))
            .all(|l| l.contains("host=\"")),
        "a series without its host:\n{metrics}"
    );
    for family in [
        "muster_instance_cpu_percent",
        "muster_instance_restarts_total",
        "muster_method_requests_total",
        "muster_bus_instances",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family}")),
            "{family} missing"
        );
    }
    let (code, body) = http("POST", &addr, "/call/echo.shout", None, r#"{"text":"x"}"#);
    assert_eq!(code, 401, "{body}");
    let (code, body) = http(
        "POST",
        &addr,
        "/call/echo.shout",
        Some(token),
        r#"{"text":"ab","times":2}"#,
    );
    assert_eq!(code, 200);
    assert!(body.contains(r#""text":"abab""#), "{body}");
    let (code, body) = http(
        "POST",
        &addr,
        "/call/echo.shout",
        Some(token),
        r#"{"times":"x"}"#,
    );
    assert_eq!(code, 400);
    assert!(body.contains("-32602"), "{body}");
    let (code, _) = http("POST", &addr, "/call/echo.nope", Some(token), "{}");
    assert_eq!(code, 404);
    let (code, _) = http("POST", &addr, "/call/echo.shout", Some(token), "{nope");
    assert_eq!(code, 400);
    let (code, body) = http(
        "POST",
        &addr,
        "/call/echo.shout",
        Some(token),
        r#"{"text":"x","times":5000}"#,
    );
    assert_eq!(code, 422, "an application error: {body}");
    let (code, body) = http("GET", &addr, "/openapi.json", None, "");
    assert_eq!(code, 200);
    assert!(
        body.contains("/call/echo.shout") && body.contains("\"openapi\""),
        "{body}"
    );
    let (code, body) = http("GET", &addr, "/", None, "");
    assert_eq!(code, 200);
    assert!(
        body.contains("<canvas") || body.contains("charts"),
        "the dashboard page"
    );
    let (code, _) = http(
        "POST",
        &addr,
        "/api/ctl/restart",
        None,
        r#"{"service":"echo"}"#,
    );
    assert_eq!(code, 401, "control needs the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muster_top_runs_in_80_columns_under_tmux() {
    let manifest = format!(
        "[host]\nhttp = \"off\"\nmonitor_every = \"200ms\"\n[context]\nname = \"top\"\n{}",
        echo("echo", "instances = 2")
    );
    let host = Host::up(MUSTER, "top", &manifest).await;
    host.wait_state("echo", 1, "running").await;
    let session = format!("muster-top-{}", std::process::id());
    let cmd = format!(
        "cd {} && {MUSTER} top --bus {}",
        host.dir.display(),
        host.bus
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "80",
            "-y",
            "24",
            &cmd,
        ])
        .status();
    let Ok(ok) = ok else {
        muster_test::skipped(
            "muster_top_runs_in_80_columns_under_tmux",
            "tmux is not installed",
        );
        return;
    };
    assert!(ok.success());
    let capture = || {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let screen = eventually(WAIT, "muster top shows both echo instances", || async {
        let s = capture();
        (s.matches("  echo ").count() >= 2 && s.contains("running")).then_some(s)
    })
    .await;
    assert!(
        screen.contains("muster top") && screen.contains("CPU%"),
        "{screen}"
    );
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    Command::new("tmux")
        .args(["send-keys", "-t", &session, "m"])
        .status()
        .unwrap();
    eventually(WAIT, "sorted by memory", || async {
        capture().contains("sort: Memory").then_some(())
    })
    .await;
    Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status()
        .unwrap();
    eventually(WAIT, "q quits", || async {
        let alive = Command::new("tmux")
            .args(["has-session", "-t", &session])
            .status()
            .unwrap()
            .success();
        (!alive).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_services_and_draws_charts_in_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(chromium) = chromium else {
        assert!(
            std::env::var_os("MUSTER_REQUIRE_BROWSER").is_none(),
            "MUSTER_REQUIRE_BROWSER is set but chromium is not installed"
        );
        muster_test::skipped(
            "the_dashboard_lists_services_and_draws_charts_in_chromium",
            "chromium is not installed (apt-get install chromium)",
        );
        return;
    };
    let dir = tempdir("browser");
    let bus = free_bus_url();
    let addr = free_http();
    let mut c = Command::new(MUSTER);
    c.args(["demo", "--bus", &bus, "--http", &addr])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut demo = Proc::spawn("muster demo", c);
    let token = eventually(WAIT, "the demo's token", || async {
        std::fs::read_to_string(dir.join(".muster/token"))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    })
    .await;
    eventually(WAIT, "the dashboard answers", || async {
        let (code, body) =
            std::panic::catch_unwind(|| http("GET", &addr, "/api/top", Some(&token), "")).ok()?;
        (code == 200 && body.contains("echo")).then_some(())
    })
    .await;
    let profile = dir.join("chromium-profile");
    // The link `muster up` prints: the page takes the token from it.
    let url = format!("http://{addr}/#token={token}");
    let browser = |extra: &[&str]| {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,1100",
                "--virtual-time-budget=6000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = browser(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    for s in ["echo", "stand", "walk", "drink_coffee", "run"] {
        assert!(
            dom.contains(&format!("<td>{s}</td>")),
            "{s} not listed:\n{dom}"
        );
    }
    let points: Vec<u64> = dom
        .match_indices("data-points=\"")
        .filter_map(|(i, m)| dom[i + m.len()..].split('"').next()?.parse().ok())
        .collect();
    assert!(
        points.iter().any(|p| *p >= 2),
        "a chart has drawn points: {points:?}"
    );
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard.png");
    let o = browser(&[&format!("--screenshot={shot}")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    demo.signal(Signal::SIGINT);
    assert!(demo.wait_exit(WAIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A counter of the host's `/metrics`, by its family's name.
fn bus_counter(addr: &str, token: &str, family: &str) -> Option<u64> {
    let (code, body) = http("GET", addr, "/metrics", Some(token), "");
    (code == 200).then_some(())?;
    body.lines()
        .find(|l| {
            l.starts_with(&format!("{family}_total{{")) || l.starts_with(&format!("{family}{{"))
        })?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

const HEARTBEATS: &str = "muster_bus_heartbeats";

/// `[host] heartbeats_per_sec` sets the rate of the host's embedded bus:
/// at one a second, the four senders (three echoes and the host's own
/// instance) are asked for one every 4 s, so twelve heartbeats take at
/// least 7.2 s, where the default rate (50) takes them in about 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_sets_the_heartbeat_rate_of_the_embedded_bus() {
    let addr = free_http();
    let manifest = format!(
        "[host]\nhttp = \"{addr}\"\nheartbeats_per_sec = 1\n[context]\nname = \"hb\"\n{}",
        echo("echo", "instances = 3")
    );
    let host = Host::up(MUSTER, "heartbeat-rate", &manifest).await;
    for slot in 0..3 {
        host.wait_state("echo", slot, "running").await;
    }
    let token = std::fs::read_to_string(host.dir.join(".muster/token")).unwrap();
    let token = token.trim();
    // Eight heartbeats first: every sender has learnt the slower interval.
    let from = eventually(WAIT, "a heartbeat count", || async {
        bus_counter(&addr, token, HEARTBEATS)
    })
    .await;
    eventually(Duration::from_secs(60), "8 heartbeats", || async {
        (bus_counter(&addr, token, HEARTBEATS)? >= from + 8).then_some(())
    })
    .await;
    let from = bus_counter(&addr, token, HEARTBEATS).unwrap();
    let t0 = std::time::Instant::now();
    eventually(Duration::from_secs(60), "12 more heartbeats", || async {
        (bus_counter(&addr, token, HEARTBEATS)? >= from + 12).then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(6), "12 heartbeats in {took:?}");
    let expired = bus_counter(&addr, token, "muster_bus_expired");
    assert_eq!(expired, Some(0), "none dropped at the slower rate");
}
