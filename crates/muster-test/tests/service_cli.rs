//! The standard service CLI, tested on a real service process: config
//! layering and errors, `.env`, secrets, logging, graceful shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muster::{CallOptions, Client};
use muster_test::{Proc, bus_and_client, eventually, wait_registered};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_muster-test-service");

fn service(bus: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--bus", bus]).args(args);
    c.env_remove("MUSTER_GREETING").env_remove("MUSTER_PORT");
    c
}

fn output(mut cmd: Command) -> std::process::Output {
    cmd.stdin(Stdio::null()).output().expect("runs")
}

#[test]
fn missing_config_key_exits_2_naming_it() {
    let out = output(service("zmq://127.0.0.1:1", &[]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "testsvc: config: missing key `greeting`");
}

#[test]
fn mistyped_config_key_exits_2_naming_it() {
    let out = output(service(
        "zmq://127.0.0.1:1",
        &["--greeting", "hi", "--port", "high"],
    ));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("key `port`"), "{err}");
}

#[test]
fn unreadable_config_file_exits_2() {
    let out = output(service(
        "zmq://127.0.0.1:1",
        &["-c", "/nonexistent/conf.toml"],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/conf.toml"));
}

async fn config_of(client: &Client) -> Value {
    client
        .call("testsvc.config", &json!({}))
        .await
        .expect("config call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_precedence_file_env_args_and_dotenv() {
    let (bus, client, url) = bus_and_client().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("svc.toml");
    std::fs::write(&file, "greeting = \"from-file\"\nport = 1\n").unwrap();
    std::fs::write(dir.join(".env"), "MUSTER_PORT=4\nMUSTER_FLAG=true\n").unwrap();

    // file < .env < process env < --key value
    let mut cmd = service(&url, &["-c", file.to_str().unwrap(), "--port", "3"]);
    cmd.current_dir(&dir).env("MUSTER_PORT", "2");
    let mut p = Proc::spawn("svc", cmd);
    wait_registered(&client, "testsvc", 1).await;
    let c = config_of(&client).await;
    assert_eq!(c["port"], 3, "--port wins: {c}");
    assert_eq!(c["greeting"], "from-file");
    assert_eq!(c["flag"], true, ".env value parsed as JSON: {c}");
    p.terminate(Duration::from_secs(10));

    let mut cmd = service(&url, &["-c", file.to_str().unwrap()]);
    cmd.current_dir(&dir).env("MUSTER_PORT", "2");
    let mut p = Proc::spawn("svc", cmd);
    wait_registered(&client, "testsvc", 1).await;
    assert_eq!(
        config_of(&client).await["port"],
        2,
        "process env beats .env and file"
    );
    p.terminate(Duration::from_secs(10));

    let mut cmd = service(&url, &["-c", file.to_str().unwrap()]);
    cmd.current_dir(&dir);
    let mut p = Proc::spawn("svc", cmd);
    wait_registered(&client, "testsvc", 1).await;
    assert_eq!(config_of(&client).await["port"], 4, ".env beats the file");
    p.terminate(Duration::from_secs(10));
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_discovery_and_logs() {
    let (bus, client, url) = bus_and_client().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let log = dir.join("svc.log");
    let mut p = Proc::spawn(
        "svc",
        service(
            &url,
            &[
                "--greeting",
                "hi",
                "--token",
                "s3cr3t-value",
                "--log-file",
                log.to_str().unwrap(),
                "--log-rotate",
                "never",
                "--log-level",
                "debug",
            ],
        ),
    );
    wait_registered(&client, "testsvc", 1).await;
    let info: Value = client.call("testsvc.$info", &json!({})).await.unwrap();
    assert_eq!(info["config"]["token"], "***", "{info}");
    assert_eq!(info["version"], "1.2.3");
    let c = config_of(&client).await;
    assert_eq!(c["token_set"], true);
    assert_eq!(c["token_debug"], "Some(***)");
    let listed = serde_json::to_string(&client.instances().await.unwrap()).unwrap();
    assert!(!listed.contains("s3cr3t"));
    p.terminate(Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).expect("log file written");
    assert!(text.contains("service started"), "{text}");
    assert!(!text.contains("s3cr3t"), "secret leaked into the log");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_id_and_transaction() {
    let (bus, client, url) = bus_and_client().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let log = dir.join("svc.log");
    let mut p = Proc::spawn(
        "svc",
        service(
            &url,
            &[
                "--greeting",
                "hi",
                "--log-file",
                log.to_str().unwrap(),
                "--log-rotate",
                "hourly",
                "--json-logs",
            ],
        ),
    );
    wait_registered(&client, "testsvc", 1).await;
    let r: String = client
        .call_with(
            "testsvc.hello",
            &json!("ann"),
            CallOptions::default().transaction(Some("TXN0000000000000001".into())),
        )
        .await
        .unwrap();
    assert_eq!(r, "hi, ann");
    p.terminate(Duration::from_secs(10));
    // Hourly rotation names the file svc.log.YYYY-MM-DD-HH.
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("svc.log."))
        .expect("rotated log file");
    let text = std::fs::read_to_string(file.path()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("saying hello"))
        .expect("handler line");
    let v: Value = serde_json::from_str(line).expect("JSON line");
    assert_eq!(v["span"]["transaction"], "TXN0000000000000001", "{line}");
    assert!(
        !v["span"]["request_id"].as_str().unwrap_or("").is_empty(),
        "{line}"
    );
    bus.stop().await;
}

/// Waits until `method` of `service` has a call running (it reports so in
/// `$stats`): a signal sent after this meets a request in flight, however
/// loaded the machine.
async fn wait_in_flight(client: &Client, service: &str, method: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{service}.{method} in flight"),
        || async {
            let reports = client.stats(Some(service)).await.ok()?;
            reports
                .into_iter()
                .flatten()
                .any(|r| r.methods.get(method).is_some_and(|m| m.in_flight > 0))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let (bus, client, url) = bus_and_client().await;
    let mut cmd = service(&url, &["--greeting", "hi"]);
    cmd.stderr(Stdio::piped());
    let mut p = Proc::spawn("svc", cmd);
    wait_registered(&client, "testsvc", 1).await;
    let c2 = client.clone();
    let call = tokio::spawn(async move {
        c2.call::<_, u64>("testsvc.sleep", &json!({"ms": 800}))
            .await
    });
    wait_in_flight(&client, "testsvc", "sleep").await;
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(call.await.unwrap().expect("in-flight call finished"), 800);
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_an_error_reply_not_a_crash() {
    let (bus, client, url) = bus_and_client().await;
    let _p = Proc::spawn("svc", service(&url, &["--greeting", "hi"]));
    wait_registered(&client, "testsvc", 1).await;
    let e = client
        .call::<_, Value>("testsvc.crash", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code, -32603);
    assert!(e.message.contains("asked to crash"), "{e}");
    let r: String = client.call("testsvc.hello", &json!("bob")).await.unwrap();
    assert_eq!(r, "hi, bob");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_gets_an_error_when_the_instance_dies_mid_request() {
    let (bus, client, url) = bus_and_client().await;
    let mut p = Proc::spawn("svc", service(&url, &["--greeting", "hi"]));
    wait_registered(&client, "testsvc", 1).await;
    let c2 = client.clone();
    let started = Instant::now();
    let call = tokio::spawn(async move {
        c2.call_with::<_, u64>(
            "testsvc.sleep",
            &json!({"ms": 20000}),
            CallOptions::default().timeout(Duration::from_secs(30)),
        )
        .await
    });
    wait_in_flight(&client, "testsvc", "sleep").await;
    p.kill9();
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.code, muster::code::UNAVAILABLE, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the caller learned of the death long before its 30 s deadline"
    );
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_bounds_a_slow_call() {
    let (bus, client, url) = bus_and_client().await;
    let _p = Proc::spawn("svc", service(&url, &["--greeting", "hi"]));
    wait_registered(&client, "testsvc", 1).await;
    let e = client
        .call_with::<_, u64>(
            "testsvc.sleep",
            &json!({"ms": 3000}),
            CallOptions::default().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, muster::code::TIMEOUT, "{e}");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_calls_are_retried_on_another_instance() {
    let (bus, client, url) = bus_and_client().await;
    let mut a = Proc::spawn("a", service(&url, &["--greeting", "hi"]));
    let mut b = Proc::spawn("b", service(&url, &["--greeting", "hi"]));
    let instances = wait_registered(&client, "testsvc", 2).await;
    let c2 = client.clone();
    // A deadline that covers the first attempt and the retry with room to
    // spare: on a loaded machine the default 5 s may not.
    let call = tokio::spawn(async move {
        c2.call_with::<_, u64>(
            "testsvc.sleep",
            &json!({"ms": 1500}),
            CallOptions::default().timeout(Duration::from_secs(60)),
        )
        .await
    });
    // Kill whichever instance is running the call, once one is.
    let busy = eventually(
        Duration::from_secs(20),
        "an instance runs the call",
        || async {
            for i in &instances {
                let s: Value = client
                    .call_with(
                        "testsvc.$stats",
                        &json!({}),
                        CallOptions::default().instance(i.instance.clone()),
                    )
                    .await
                    .ok()?;
                if s["methods"]["sleep"]["in_flight"] == 1 {
                    return Some(s["instance"].as_str()?.to_owned());
                }
            }
            None
        },
    )
    .await;
    let pid_of = |id: &str| instances.iter().find(|i| i.instance == id).unwrap().pid;
    if pid_of(&busy) == a.pid() {
        a.kill9();
    } else {
        b.kill9();
    }
    assert_eq!(call.await.unwrap().expect("retried on the survivor"), 1500);
    bus.stop().await;
}

#[test]
fn every_test_program_answers_help() {
    for bin in [
        env!("CARGO_BIN_EXE_muster-test-service"),
        env!("CARGO_BIN_EXE_muster-test-worker"),
        env!("CARGO_BIN_EXE_muster-test-state"),
        env!("CARGO_BIN_EXE_muster-test-ticker"),
    ] {
        let o = std::process::Command::new(bin)
            .arg("--help")
            .output()
            .unwrap();
        assert!(o.status.success(), "{bin} --help: {o:?}");
        assert!(!o.stdout.is_empty(), "{bin} --help prints its usage");
    }
}

/// A SIGTERM that arrives while the service is still starting is not
/// lost, nor fatal: the service finishes starting, then stops gracefully
/// (exit 0). Before the stop signals were listened for from the first
/// moment, the default action killed the process mid-start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_stops_gracefully() {
    let (_bus, _client, url) = bus_and_client().await;
    let dir = tempfile::Builder::new()
        .prefix("muster-start-term-")
        .tempdir()
        .unwrap();
    let gate = dir.path().join("gate");
    let mut c = Command::new(BIN);
    c.args(["--bus", &url, "--greeting", "hi", "--log-level", "warn"])
        .env("TESTSVC_INIT_GATE", &gate);
    let mut svc = Proc::spawn("testsvc", c);
    // The start is held in `init`: signal it there, then let it go on.
    eventually(Duration::from_secs(20), "the start waiting in init", || {
        std::future::ready(gate.with_extension("waiting").exists().then_some(()))
    })
    .await;
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    std::fs::write(&gate, b"").unwrap();
    let status = svc.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit 0 after a SIGTERM during start: {status}"
    );
}

/// An instance started before its bus waits for the bus instead of
/// exiting: it registers and answers once the bus is up, and hears its
/// cancel notices from then on. Before, the cancel-notice subscription,
/// unconfirmed within 3 s, ended the start ("no bus takes events"), which
/// also killed instances of a thousand started at once on a busy bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_before_its_bus_waits_for_it() {
    let url = muster_test::free_bus_url();
    let mut c = service(&url, &["--greeting", "hi", "--log-level", "info"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut svc = Proc::spawn("testsvc", c);
    let (_, stderr) = svc.take_output();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The point where the start used to fail, with no bus at all.
    until_logged(&mut lines, "cancel notices not heard yet").await;
    let bus = muster_test::start_bus(&url).await;
    let client = Client::connect(&url).await.unwrap();
    wait_registered(&client, "testsvc", 1).await;
    let r: String = client.call("testsvc.hello", &json!("bob")).await.unwrap();
    assert_eq!(r, "hi, bob");
    until_logged(&mut lines, "cancel notices heard").await;
    let status = svc.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
    bus.stop().await;
}

/// Waits for a line of the service's log containing `want`.
async fn until_logged(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &str) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), lines.recv()).await {
            Ok(Some(l)) if l.contains(want) => return,
            Ok(Some(l)) => seen.push(l),
            _ => panic!("no {want:?} in the service's log; it said: {seen:#?}"),
        }
    }
}
