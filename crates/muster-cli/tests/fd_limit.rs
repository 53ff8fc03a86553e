//! A host under the usual limit on open files (a soft limit of 1,024 is
//! common; here a smaller one, so that a few dozen instances reach it):
//! it raises its own soft limit to the hard one and gives its instances
//! the limit it was started with; under a hard limit too small for the
//! context it fails the starts that do not fit, with the reason, and
//! keeps running.

use muster_test::eventually;
use muster_test::host::{Host, WAIT};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

/// A `muster` that runs under `ulimit_args` (for `muster up` and
/// `muster ctl` alike), in a directory removed with the returned guard.
fn limited_muster(ulimit_args: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("muster-nofile-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("muster");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nulimit {ulimit_args} || exit 99\nexec \"{MUSTER}\" \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

fn sleepers(n: usize) -> String {
    format!(
        "[context]\nname = \"many\"\nmax_restarts = 100000\n\n[[service]]\nname = \"sleeper\"\n\
         run = [\"/bin/sh\", \"-c\", \"exec sleep 600\"]\nready = \"spawned\"\n\
         instances = {n}\nbackoff = \"200ms\"\nstop_timeout = \"2s\"\n"
    )
}

fn instances(status: &Value) -> Vec<Value> {
    status["transactions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["services"].as_array().into_iter().flatten())
        .flat_map(|s| s["instances"].as_array().into_iter().flatten())
        .cloned()
        .collect()
}

/// "Max open files" of `/proc/PID/limits`: (soft, hard).
fn nofile(pid: u64) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_past_its_soft_limit_raises_it_and_instances_keep_the_first() {
    let hard = nofile(u64::from(std::process::id())).1;
    // 80 instances need about 320 descriptors in the host: past a soft
    // limit of 128 (before the fix the host panicked in its log code).
    let (_bin, muster) = limited_muster("-S -n 128");
    let host = Host::up(&muster, "nofile-soft", &sleepers(80)).await;
    let all = eventually(WAIT * 3, "80 sleepers running", || async {
        let list = instances(&host.try_status()?);
        (list.len() == 80 && list.iter().all(|i| i["state"] == "running")).then_some(list)
    })
    .await;
    let (soft, host_hard) = nofile(u64::from(host.proc.pid()));
    assert_eq!(soft, hard, "the host's soft limit is its hard limit");
    assert_eq!(host_hard, hard);
    let pid = all[0]["pid"].as_u64().unwrap();
    let (soft, _) = nofile(pid);
    assert_eq!(
        soft, "128",
        "an instance gets the limit the host was started with"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("MUSTER_NOFILE_SOFT"),
        "the trampoline's variable is not passed on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_at_its_hard_limit_fails_the_starts_that_do_not_fit_and_keeps_running() {
    let (_bin, muster) = limited_muster("-n 160");
    let host = Host::up(&muster, "nofile-hard", &sleepers(80)).await;
    let list = eventually(WAIT * 3, "some running, the rest refused", || async {
        let list = instances(&host.try_status()?);
        let running = list.iter().filter(|i| i["state"] == "running").count();
        let refused = list
            .iter()
            .any(|i| i.to_string().contains("too few file descriptors"));
        (running > 0 && refused).then_some(list)
    })
    .await;
    let running = list.iter().filter(|i| i["state"] == "running").count();
    assert!(running < 80, "{running} running under a limit of 160");
    // It goes on retrying the refused starts (after their backoff) and
    // answering, with its reserve.
    let restarts =
        |list: &[Value]| -> u64 { list.iter().filter_map(|i| i["restarts"].as_u64()).sum() };
    let before = restarts(&list);
    eventually(WAIT, "the refused starts retried", || async {
        (restarts(&instances(&host.try_status()?)) > before).then_some(())
    })
    .await;
    assert!(
        !host.log().contains("panicked"),
        "the host panicked:\n{}",
        host.log()
    );
}
