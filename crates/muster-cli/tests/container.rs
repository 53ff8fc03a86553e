//! The container image and the compose fleet (`Dockerfile`,
//! `deploy/compose.yaml`, `docs/deploy.md`), built and run with a real
//! Docker engine.
//!
//! Needs `MUSTER_TEST_DOCKER_BASE`: a local Debian image to build on
//! (`.ci/run` starts dockerd and makes one with mmdebstrap, since no
//! registry can be pulled from here); SKIPPED without it. The image is
//! built from the Dockerfile with the `muster` under test (`PREBUILT`) on
//! that base; the compose fleet's NATS runs on the same base (it carries
//! Debian's nats-server).
//!
//! - The demo in a container answers `muster call` from this machine
//!   through ports published on 127.0.0.1, turns healthy through its
//!   `HEALTHCHECK`, runs as a user that is not root, and stops cleanly on
//!   `docker stop` (tini passes SIGTERM to the host).
//! - The compose fleet: three hosts on NATS; calls are balanced across
//!   all three; one host's container is killed and the calls made after
//!   are all answered; `down` leaves no container, network or volume.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use muster::Client;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");
const LAUNCH: &str = env!("CARGO_BIN_EXE_muster-launch");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, returning its output; panics with its stderr when it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn docker() -> Command {
    let mut c = Command::new("docker");
    // The classic builder, which needs no buildx plugin.
    c.env("DOCKER_BUILDKIT", "0");
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `n` consecutive ports free on 127.0.0.1.
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = muster_test::free_port_base();
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// Removes an image when dropped.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker().args(["rmi", "-f", &self.0]).output();
    }
}

/// Removes a container (and its anonymous volume) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker().args(["rm", "-f", "-v", &self.0]).output();
    }
}

/// `docker-compose down -v` of a project when dropped.
struct Fleet {
    project: String,
    env: Vec<(&'static str, String)>,
}

impl Fleet {
    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(repo().join("deploy"))
            .args(["-p", &self.project, "-f", "compose.yaml"])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        c
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.compose().args(["down", "-v", "-t", "5"]).output();
    }
}

/// What is left of a compose project: containers, networks, volumes.
fn leftovers(project: &str) -> String {
    let label = format!("label=com.docker.compose.project={project}");
    ["ps -a -q", "network ls -q", "volume ls -q"]
        .iter()
        .map(|what| {
            let mut c = docker();
            c.args(what.split(' ')).args(["--filter", &label]);
            stdout(&run(&mut c))
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_the_demo_and_the_compose_fleet_survives_a_dead_host() {
    let Some(base) = muster_test::broker_url("MUSTER_TEST_DOCKER_BASE", "container") else {
        return;
    };
    let tag = format!("muster-test:{}", std::process::id());
    let _image = Image(tag.clone());
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("Dockerfile"), context.path().join("Dockerfile")).unwrap();
    std::fs::copy(MUSTER, context.path().join("muster")).unwrap();
    std::fs::copy(LAUNCH, context.path().join("muster-launch")).unwrap();
    // The base stands in for the Rust image too: with PREBUILT, the build
    // stage only copies the binary.
    run(docker()
        .args(["build", "-q", "-t", &tag])
        .args(["--build-arg", "PREBUILT=muster"])
        .arg("--build-arg")
        .arg(format!("BUILD_IMAGE={base}"))
        .arg("--build-arg")
        .arg(format!("BASE_IMAGE={base}"))
        .arg(context.path()));

    demo_in_a_container(&tag).await;
    compose_fleet(&tag, &base).await;
}

async fn demo_in_a_container(tag: &str) {
    let bus = free_ports(3);
    let rpc = free_ports(10);
    let name = format!("muster-test-demo-{}", std::process::id());
    let _container = Container(name.clone());
    run(docker()
        .args(["run", "-d", "--name", &name])
        .arg("-p")
        .arg(format!("127.0.0.1:{bus}-{}:{bus}-{}", bus + 2, bus + 2))
        .arg("-p")
        .arg(format!("127.0.0.1:{rpc}-{}:{rpc}-{}", rpc + 9, rpc + 9))
        // Where the health check's `muster ctl` finds the bus.
        .arg("-e")
        .arg(format!("MUSTER_BUS=zmq://127.0.0.1:{bus}"))
        .arg(tag)
        // The image's CMD, on the test's own ports.
        .args(["demo", "--bind", "0.0.0.0", "--advertise", "127.0.0.1"])
        .arg("--bus")
        .arg(format!("zmq://0.0.0.0:{bus}"))
        .arg("--rpc-ports")
        .arg(format!("{rpc}-{}", rpc + 9))
        .args([
            "--plain-tcp",
            "--http",
            "off",
            "--state-dir",
            "/var/lib/muster",
        ]));

    // `muster call` from this machine, through the published ports.
    let url = format!("zmq://127.0.0.1:{bus}");
    let answer = muster_test::eventually(
        Duration::from_secs(60),
        "the demo in the container to answer",
        || async {
            let out = Command::new(MUSTER)
                .args(["call", "--bus", &url, "--timeout", "2s", "echo.shout"])
                .arg(r#"{"text":"hi","times":2}"#)
                .output()
                .unwrap();
            out.status.success().then(|| stdout(&out))
        },
    )
    .await;
    assert_eq!(answer, r#"{"text":"hihi"}"#);

    // Not root, and the host's first process under tini.
    let uid = stdout(&run(docker().args(["exec", &name, "id", "-u"])));
    assert_eq!(uid, "10001");
    let init = stdout(&run(docker().args([
        "exec",
        &name,
        "cat",
        "/proc/1/cmdline",
    ])));
    assert!(init.starts_with("/usr/bin/tini"), "pid 1 is {init:?}");
    // The small launcher the host starts its children through is there.
    run(docker().args(["exec", &name, "test", "-x", "/usr/local/bin/muster-launch"]));

    // The HEALTHCHECK (`muster ctl status`) turns it healthy.
    muster_test::eventually(Duration::from_secs(120), "a healthy container", || {
        let name = name.clone();
        async move {
            let out =
                run(docker().args(["inspect", "--format", "{{.State.Health.Status}}", &name]));
            (stdout(&out) == "healthy").then_some(())
        }
    })
    .await;

    // `docker stop` reaches the host, which stops its services and exits 0.
    run(docker().args(["stop", "-t", "30", &name]));
    let code = stdout(&run(docker().args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &name,
    ])));
    let logs = run(docker().args(["logs", &name]));
    assert_eq!(code, "0", "{}", String::from_utf8_lossy(&logs.stderr));
    assert!(stdout(&logs).ends_with("stopped"), "{}", stdout(&logs));
}

async fn compose_fleet(tag: &str, base: &str) {
    let nats_port = free_ports(1);
    let fleet = Fleet {
        project: format!("muster-test-{}", std::process::id()),
        env: vec![
            ("MUSTER_IMAGE", tag.to_owned()),
            ("NATS_IMAGE", base.to_owned()),
            ("NATS_PORT", nats_port.to_string()),
        ],
    };
    run(fleet.compose().args(["up", "-d"]));
    let url = format!("nats://127.0.0.1:{nats_port}?prefix=muster");
    let client = muster_test::eventually(Duration::from_secs(60), "the fleet's NATS", || {
        let url = url.clone();
        async move { Client::connect(&url).await.ok() }
    })
    .await;
    let echoes = || async {
        client
            .instances()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.service == "echo")
            .collect::<Vec<_>>()
    };
    let instances =
        muster_test::eventually(Duration::from_secs(90), "6 echo instances", || async {
            let all = echoes().await;
            (all.len() == 6).then_some(all)
        })
        .await;
    let transactions: std::collections::BTreeSet<_> = instances
        .iter()
        .filter_map(|i| i.transaction.clone())
        .collect();
    assert_eq!(
        transactions.len(),
        3,
        "one transaction per host: {instances:?}"
    );

    // Balanced: every host's instances take some of 60 calls.
    let args = serde_json::json!({"text": "hi"});
    for _ in 0..60 {
        let _: serde_json::Value = client.call("echo.shout", &args).await.unwrap();
    }
    let mut served = std::collections::BTreeMap::<String, u64>::new();
    for report in client
        .stats(Some("echo"))
        .await
        .unwrap()
        .into_iter()
        .flatten()
    {
        let n = report.methods.get("shout").map_or(0, |m| m.num_requests);
        let t = instances
            .iter()
            .find(|i| i.instance == report.instance)
            .and_then(|i| i.transaction.clone())
            .unwrap_or_default();
        *served.entry(t).or_default() += n;
    }
    assert_eq!(served.values().sum::<u64>(), 60, "{served:?}");
    assert!(
        served.len() == 3 && served.values().all(|n| *n > 0),
        "every host serves: {served:?}"
    );

    // One host dies; every call made after is answered.
    let h2 = stdout(&run(fleet.compose().args(["ps", "-q", "h2"])));
    run(docker().args(["kill", &h2]));
    let mut failed = Vec::new();
    for _ in 0..100 {
        let r = client
            .call_with::<_, serde_json::Value>(
                "echo.shout",
                &args,
                muster::CallOptions::default().timeout(Duration::from_secs(5)),
            )
            .await;
        if let Err(e) = r {
            failed.push(e.to_string());
        }
    }
    assert!(failed.is_empty(), "calls failed after the kill: {failed:?}");

    client.transport().close().await;
    run(fleet.compose().args(["down", "-v", "-t", "10"]));
    assert_eq!(leftovers(&fleet.project), "", "left running after down");
}
