//! Hosts that share a broker are one fleet for `muster ctl`: `status`
//! lists every host by name, `SERVICE@HOST` reaches that host alone, and
//! a command that needs one host refuses to guess, and a host that dies
//! is shown as lost by the others. Two `muster up` on
//! one machine (each its own directory and state), Redis from
//! `MUSTER_TEST_REDIS` (SKIPPED without it).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use muster_test::host::{Host, http, tempdir};
use muster_test::{broker_url, eventually};
use serde_json::Value;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

fn ctl(dir: &Path, bus: &str, args: &[&str]) -> Output {
    Command::new(MUSTER)
        .arg("ctl")
        .args(args)
        .args(["--bus", bus])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `(host, pid)` of every running echo instance, from `ctl status --json`.
fn echo_pids(dir: &Path, bus: &str) -> Option<Vec<(String, u64)>> {
    let o = ctl(dir, bus, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    let mut out = Vec::new();
    for st in v.as_array()? {
        for t in st["transactions"].as_array()? {
            for s in t["services"].as_array()? {
                for i in s["instances"].as_array()? {
                    if s["name"] == "echo" && i["state"] == "running" {
                        out.push((st["host"].as_str()?.to_owned(), i["pid"].as_u64()?));
                    }
                }
            }
        }
    }
    out.sort();
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_on_one_broker_are_one_fleet_for_ctl() {
    let test = "hosts_on_one_broker_are_one_fleet_for_ctl";
    let Some(base) = broker_url("MUSTER_TEST_REDIS", test) else {
        return;
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let bus = format!(
        "{base}{sep}prefix=f{:x}",
        muster::id::random_u64() & 0xff_ffff
    );
    let manifest = |name: &str, http: &str| {
        format!(
            "[host]\nname = \"{name}\"\nbus = \"{bus}\"\nhttp = \"{http}\"\n\n[context]\nname = \"ctx\"\n\n[[service]]\nname = \"echo\"\nrun = [\"{MUSTER}\", \"__service\", \"echo\", \"--log-level\", \"warn\"]\n"
        )
    };
    let (dir_a, dir_b) = (tempdir("fleet-a"), tempdir("fleet-b"));
    let dashboard = muster_test::host::free_http();
    std::fs::write(dir_a.join("muster.toml"), manifest("alpha", &dashboard)).unwrap();
    std::fs::write(dir_b.join("muster.toml"), manifest("beta", "off")).unwrap();
    let _a = Host::start(MUSTER, dir_a.clone(), bus.clone()).await;
    // One token for the fleet: the second host is given the first's.
    std::fs::create_dir_all(dir_b.join(".muster")).unwrap();
    std::fs::copy(dir_a.join(".muster/token"), dir_b.join(".muster/token")).unwrap();
    let mut b = Host::start(MUSTER, dir_b.clone(), bus.clone()).await;

    let running = eventually(
        Duration::from_secs(30),
        "echo running on both hosts",
        || async { echo_pids(&dir_a, &bus).filter(|p| p.len() == 2) },
    )
    .await;
    let hosts: Vec<&str> = running.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts, ["alpha", "beta"], "status lists every host by name");
    let text = String::from_utf8_lossy(&ctl(&dir_b, &bus, &["status"]).stdout).into_owned();
    assert!(
        text.contains("host alpha") && text.contains("host beta"),
        "{text}"
    );

    // `echo@beta`: beta's instance restarts, alpha's does not.
    let o = ctl(&dir_a, &bus, &["restart", "echo@beta"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = eventually(Duration::from_secs(30), "beta's echo replaced", || async {
        echo_pids(&dir_a, &bus).filter(|p| p.len() == 2 && p[1].1 != running[1].1)
    })
    .await;
    assert_eq!(after[0], running[0], "alpha's echo was not touched");

    // alpha's dashboard shows both hosts, filters by one, and restarts
    // beta's echo through beta's control service.
    let token = std::fs::read_to_string(dir_a.join(".muster/token")).unwrap();
    let token = token.trim();
    let (code, body) = http("GET", &dashboard, "/api/top", Some(token), "");
    assert_eq!(code, 200, "{body}");
    let top: Value = serde_json::from_str(&body).unwrap();
    let mut shown: Vec<&str> = top
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["host"].as_str())
        .collect();
    shown.sort_unstable();
    assert_eq!(shown, ["alpha", "beta"], "{top}");
    let (_, body) = http("GET", &dashboard, "/api/top?host=beta", Some(token), "");
    let only: Value = serde_json::from_str(&body).unwrap();
    assert!(
        only.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|t| t["host"] == "beta")),
        "{only}"
    );
    let (code, body) = http(
        "POST",
        &dashboard,
        "/api/ctl/restart",
        Some(token),
        r#"{"host":"beta","service":"echo"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let again = eventually(
        Duration::from_secs(30),
        "beta's echo replaced from alpha's dashboard",
        || async { echo_pids(&dir_a, &bus).filter(|p| p.len() == 2 && p[1].1 != after[1].1) },
    )
    .await;
    assert_eq!(again[0], running[0], "alpha's echo was not touched");

    // A command for one host, with two and none named: refused, naming them.
    let o = ctl(&dir_a, &bus, &["reload"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 hosts on this bus (alpha, beta)"), "{err}");
    let o = ctl(&dir_a, &bus, &["--host", "alpha", "status", "--json"]);
    let one: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(one["host"], "alpha", "--host picks one: {one}");
    assert_eq!(one["fleet"][0]["name"], "beta", "alpha knows beta: {one}");
    assert_eq!(one["fleet"][0]["state"], "up");

    // beta dies: alpha shows it lost (Redis forgets a registration after
    // 3 s, the host after four lists without it).
    b.proc.kill9();
    let lost = eventually(Duration::from_secs(30), "beta shown lost", || async {
        let o = ctl(&dir_a, &bus, &["status", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        (v["host"] == "alpha" && v["fleet"][0]["state"] == "lost").then_some(v)
    })
    .await;
    assert_eq!(lost["fleet"][0]["name"], "beta", "{lost}");
    let text = String::from_utf8_lossy(&ctl(&dir_a, &bus, &["status"]).stdout).into_owned();
    assert!(text.contains("hosts lost: beta"), "{text}");
}

/// Each host's recent runs of `tick`: (fire time, outcome).
fn tick_runs(dir: &Path, bus: &str) -> Vec<(String, String, String)> {
    let o = ctl(dir, bus, &["status", "--json"]);
    let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for st in v.as_array().into_iter().flatten() {
        for t in st["transactions"].as_array().into_iter().flatten() {
            for s in t["services"].as_array().into_iter().flatten() {
                for r in s["schedule"]["recent"].as_array().into_iter().flatten() {
                    if let (Some(h), Some(f), Some(o)) = (
                        st["host"].as_str(),
                        r["fire"].as_str(),
                        r["outcome"].as_str(),
                    ) {
                        out.push((f.to_owned(), h.to_owned(), o.to_owned()));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Two hosts with the same scheduled service: each fire time runs on one
/// of them; the other records it as run elsewhere.
async fn one_run_per_fire_time(bus: &str, second_joins_embedded: bool, tag: &str) {
    let manifest = |name: &str, join: bool| {
        let join = if join { "own_bus = false\n" } else { "" };
        format!(
            "[host]\nname = \"{name}\"\nbus = \"{bus}\"\n{join}http = \"off\"\n\n[context]\nname = \"cron\"\n\n[[service]]\nname = \"tick\"\nrun = [\"/bin/true\"]\nschedule = \"every 1s\"\n"
        )
    };
    let (dir_a, dir_b) = (tempdir(&format!("{tag}-a")), tempdir(&format!("{tag}-b")));
    std::fs::write(dir_a.join("muster.toml"), manifest("alpha", false)).unwrap();
    std::fs::write(
        dir_b.join("muster.toml"),
        manifest("beta", second_joins_embedded),
    )
    .unwrap();
    let _a = Host::start(MUSTER, dir_a.clone(), bus.to_owned()).await;
    std::fs::create_dir_all(dir_b.join(".muster")).unwrap();
    for file in ["token", "bus.secret"] {
        std::fs::copy(
            dir_a.join(".muster").join(file),
            dir_b.join(".muster").join(file),
        )
        .unwrap();
    }
    let _b = Host::start(MUSTER, dir_b.clone(), bus.to_owned()).await;

    // Fire times both hosts have seen since both run: at least five.
    let runs = eventually(
        Duration::from_secs(60),
        "five fire times seen by both hosts",
        || async {
            let runs = tick_runs(&dir_a, bus);
            let both = runs
                .iter()
                .filter(|(f, h, _)| {
                    h == "alpha" && runs.iter().any(|(g, k, _)| g == f && k == "beta")
                })
                .count();
            // Runs still going have no outcome yet; wait until settled.
            (both >= 5).then_some(runs)
        },
    )
    .await;
    let mut fires: Vec<&str> = runs.iter().map(|(f, _, _)| f.as_str()).collect();
    fires.dedup();
    for fire in fires {
        let here: Vec<&(String, String, String)> = runs.iter().filter(|r| r.0 == fire).collect();
        if here.len() < 2 {
            continue;
        }
        let ran: Vec<&str> = here
            .iter()
            .filter(|r| r.2 == "exit code 0")
            .map(|r| r.1.as_str())
            .collect();
        assert_eq!(ran.len(), 1, "fire time {fire} ran on {ran:?}: {runs:?}");
        assert!(
            here.iter()
                .any(|r| r.2.starts_with("not run here: another host")),
            "{fire}: {runs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_run_once_per_fire_time_across_hosts_on_the_embedded_bus() {
    let bus = muster_test::free_bus_url();
    one_run_per_fire_time(&bus, true, "sched-zmq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_run_once_per_fire_time_across_hosts_on_redis() {
    let test = "schedules_run_once_per_fire_time_across_hosts_on_redis";
    let Some(base) = broker_url("MUSTER_TEST_REDIS", test) else {
        return;
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let bus = format!(
        "{base}{sep}prefix=s{:x}",
        muster::id::random_u64() & 0xff_ffff
    );
    one_run_per_fire_time(&bus, false, "sched-redis").await;
}
