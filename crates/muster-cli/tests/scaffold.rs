//! `muster new` and `muster import` as a user runs them: generate into a
//! temporary directory, build the projects with cargo (they depend on this
//! checkout's crates by path), run the context under `muster up`, call a
//! generated method and watch generated triggers fire.
//!
//! The generated projects build into `target/scaffold-test` (not this
//! build's own target directory, which cargo holds locked while tests run),
//! with this workspace's `Cargo.lock`, offline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use muster::{Client, Event, Subscription};
use muster_test::{Proc, eventually, free_bus_url};
use serde_json::Value;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const WAIT: Duration = Duration::from_secs(60);

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muster-scaffold-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn target_dir() -> PathBuf {
    Path::new(WORKSPACE).join("target/scaffold-test")
}

fn muster(args: &[&str], cwd: &Path) -> Output {
    Command::new(MUSTER)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `cargo ARGS` in `dir`, offline, with this workspace's lock file.
fn cargo(dir: &Path, args: &[&str]) {
    std::fs::copy(
        Path::new(WORKSPACE).join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let o = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo {args:?} in {}:\n{}",
        dir.display(),
        text(&o)
    );
}

/// `muster up` of the manifest in `dir`, on a free bus, HTTP off.
struct Up {
    proc: Proc,
    bus: String,
}

impl Up {
    async fn start(dir: &Path) -> Self {
        let bus = free_bus_url();
        let log = std::fs::File::create(dir.join("host.log")).unwrap();
        let mut c = Command::new(MUSTER);
        c.args(["up", "muster.toml", "--bus", &bus, "--http", "off"])
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", target_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let up = Self {
            proc: Proc::spawn("muster up", c),
            bus,
        };
        eventually(WAIT, "the host's bus", || async {
            Client::connect(&up.bus).await.ok()
        })
        .await;
        up
    }

    async fn events(&self) -> Subscription {
        muster_test::lifecycle_events(&self.bus).await
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.proc.wait_exit(Duration::from_secs(15));
    }
}

/// Waits for `service`'s `event`, returning every event seen until then.
async fn until(events: &mut Subscription, service: &str, event: &str, seen: &mut Vec<String>) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(Event { payload, .. }) = events.recv().await {
            let s = payload["service"].as_str().unwrap_or("").to_owned();
            let e = payload["event"].as_str().unwrap_or("").to_owned();
            seen.push(format!("{s}:{e}"));
            if s == service && e == event {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no {service}:{event}; seen {seen:?}"
    );
}

const SERVICES_TOML: &str = r#"
[context]
name = "shop"

[[service]]
name = "front"
description = "Takes orders"
rpc = ["greet"]
on_start = { start = ["audit"] }

[[service]]
name = "audit"
description = "Checks the books once, then hands over"
task = true
autostart = false
on_exit = { start = ["clerk"] }

[[service]]
name = "clerk"
description = "Works the order queue"
consume = ["orders"]
subscribe = ["shop.>"]
every = "1s"
autostart = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_generates_services_that_build_run_answer_and_trigger() {
    let dir = tempdir("new");
    // One service with every kind of entry point.
    let o = muster(
        &[
            "new",
            "orders",
            "--rpc",
            "place",
            "--subscribe",
            "stock.>",
            "--consume",
            "orders.new",
            "--every",
            "2s",
            "--task",
            "--path",
            ".",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "src/main.rs",
        "tests/service.rs",
        "README.md",
        "muster.toml",
    ] {
        assert!(dir.join("orders").join(f).is_file(), "orders/{f}");
    }
    // Refusals write nothing.
    let again = muster(&["new", "orders", "--path", "."], &dir);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let bad = muster(&["new", "9lives", "--path", "."], &dir);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("\"9lives\" is not valid"),
        "{}",
        text(&bad)
    );
    assert!(!dir.join("9lives").exists());
    // Its generated test (the in-memory harness) passes.
    cargo(&dir.join("orders"), &["test", "--quiet"]);

    // A context of three services from a services.toml.
    std::fs::write(dir.join("services.toml"), SERVICES_TOML).unwrap();
    let o = muster(&["new", "--from", "services.toml", "--path", "."], &dir);
    assert!(o.status.success(), "{}", text(&o));
    let shop = dir.join("shop");
    cargo(&shop, &["build", "--quiet"]);

    let up = Up::start(&shop).await;
    let mut events = up.events().await;
    let mut seen = Vec::new();
    until(&mut events, "front", "started", &mut seen).await;
    // audit does not start with the context: only front's on_start does it.
    until(&mut events, "audit", "started", &mut seen).await;
    until(&mut events, "audit", "exited", &mut seen).await;
    // clerk is started by audit's on_exit.
    until(&mut events, "clerk", "started", &mut seen).await;
    let o = muster(
        &["call", "front.greet", r#"{"text":"hi"}"#, "--bus", &up.bus],
        &shop,
    );
    assert!(o.status.success(), "{}", text(&o));
    let reply: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reply, serde_json::json!({"method": "greet", "text": "hi"}));
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../muster-scaffold/tests/fixtures"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_runs_the_state_machine_sample() {
    let dir = tempdir("import");
    let fixture = format!("{FIXTURES}/StateMachineSample.xml");
    // Without --meta the file is refused with the way to go.
    let o = muster(&["import", &fixture], &dir);
    assert!(!o.status.success());
    assert!(text(&o).contains("--meta"), "{}", text(&o));
    let o = muster(&["import", "--meta", &fixture, "--path", "."], &dir);
    assert!(o.status.success(), "{}", text(&o));
    let report = text(&o);
    for said in ["task_topic \"process\"", "pub_port 5557", "service_path"] {
        assert!(report.contains(said), "{said} reported in\n{report}");
    }
    let ctx = dir.join("StateMachineSample");
    let manifest = std::fs::read_to_string(ctx.join("muster.toml")).unwrap();
    assert!(
        manifest.contains("on_exit = { start = [\"walk\"] }"),
        "{manifest}"
    );
    cargo(&ctx, &["build", "--quiet"]);

    let up = Up::start(&ctx).await;
    let mut events = up.events().await;
    let mut seen = Vec::new();
    for step in ["stand", "walk", "drink_coffee", "run"] {
        until(&mut events, step, "started", &mut seen).await;
        until(&mut events, step, "exited", &mut seen).await;
    }
    // run's on_exit ends the transaction.
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Event { payload, .. }) = events.recv().await {
            if payload["event"] == "exited" && payload.get("service").is_none_or(Value::is_null) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ended, Ok(true)),
        "the context ended; seen {seen:?}"
    );
    drop(up);

    // A context file: the manifest is printed, with the report.
    let o = muster(
        &["import", &format!("{FIXTURES}/Context-EchoAction.xml")],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("name = \"echo_action\""), "{printed}");
    assert!(
        printed.contains("on_fail = { restart = [\"echo_action\"] }"),
        "{printed}"
    );
    assert!(
        printed.contains("bus = \"zmq://127.0.0.1:5556\""),
        "{printed}"
    );
    assert!(
        text(&o).contains("ContextID \"context001\""),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
