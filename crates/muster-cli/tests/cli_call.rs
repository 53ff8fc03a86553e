//! `muster call`, `ls` and `stats` as a user runs them, against
//! `muster bus` and the `echo` example in separate processes.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use muster::Client;
use muster_test::{Proc, free_bus_url, wait_registered};
use serde_json::Value;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

fn muster(args: &[&str]) -> Output {
    Command::new(MUSTER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("muster runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

fn spawn_bus(url: &str) -> Proc {
    muster_test::spawn_bus_process(MUSTER, url)
}

fn spawn_example(url: &str, name: &str) -> Proc {
    muster_test::spawn_example(MUSTER, url, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ls_and_stats_as_in_the_readme() {
    let url = free_bus_url();
    let _bus = spawn_bus(&url);
    let _echo = spawn_example(&url, "echo");
    let client = Client::connect(&url).await.unwrap();
    wait_registered(&client, "echo", 1).await;

    let ok = muster(&[
        "call",
        "echo.shout",
        r#"{"text":"hi","times":2}"#,
        "--bus",
        &url,
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), r#"{"text":"hihi"}"#);

    // Joining a trace; a value that is not a traceparent is refused.
    let traced = muster(&[
        "call",
        "echo.shout",
        r#"{"text":"hi"}"#,
        "--traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "--bus",
        &url,
    ]);
    assert_eq!(traced.status.code(), Some(0), "{}", stderr(&traced));
    let untraced = muster(&[
        "call",
        "echo.shout",
        "{}",
        "--traceparent",
        "01-x",
        "--bus",
        &url,
    ]);
    assert_eq!(untraced.status.code(), Some(2));
    assert!(
        stderr(&untraced).contains("not a W3C traceparent"),
        "{}",
        stderr(&untraced)
    );

    let bad = muster(&["call", "echo.shout", r#"{"times":"x"}"#, "--bus", &url]);
    assert_eq!(bad.status.code(), Some(1));
    let e: Value = serde_json::from_str(&stderr(&bad)).expect("error printed as JSON");
    assert_eq!(e["code"], -32602);
    assert_eq!(e["data"]["path"], "times");

    let started = Instant::now();
    let none = muster(&["call", "nope.x", "{}", "--bus", &url]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "unknown service answered at once"
    );
    assert_eq!(none.status.code(), Some(1));
    let e: Value = serde_json::from_str(&stderr(&none)).unwrap();
    assert_eq!(e["code"], -32601);

    let unknown_method = muster(&["call", "echo.nope", "--bus", &url]);
    let e: Value = serde_json::from_str(&stderr(&unknown_method)).unwrap();
    assert_eq!(e["code"], -32601);

    let positional = muster(&["call", "echo.shout", r#"["ab",3]"#, "--bus", &url]);
    assert_eq!(stdout(&positional), r#"{"text":"ababab"}"#);

    let packed = muster(&[
        "call",
        "echo.shout",
        r#"{"text":"mp"}"#,
        "--msgpack",
        "--bus",
        &url,
    ]);
    assert_eq!(stdout(&packed), r#"{"text":"mp"}"#);

    let app = muster(&[
        "call",
        "echo.shout",
        r#"{"text":"x","times":5000}"#,
        "--bus",
        &url,
    ]);
    let e: Value = serde_json::from_str(&stderr(&app)).unwrap();
    assert_eq!(e["code"], 1001, "application error codes reach the caller");

    // One line per service, every line within a terminal's width.
    let ls = muster(&["ls", "--bus", &url]);
    let text = stdout(&ls);
    assert!(
        text.lines()
            .any(|l| l.starts_with("echo ") && l.contains("shout(text, times?)")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
    // The detail view, with the schemas.
    let info = muster(&["info", "echo", "--bus", &url]);
    let text = stdout(&info);
    assert!(
        text.contains("echo.shout(text, times?) -> Echoed"),
        "{text}"
    );
    assert!(
        text.contains(r#""description": "What to shout.""#),
        "{text}"
    );
    let none = muster(&["info", "nope", "--bus", &url]);
    assert_eq!(none.status.code(), Some(1));

    let ls_json = muster(&["ls", "--json", "--bus", &url]);
    let v: Value = serde_json::from_str(&stdout(&ls_json)).unwrap();
    assert_eq!(v[0]["service"], "echo");
    let shout = v[0]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "shout")
        .expect("shout listed");
    assert_eq!(shout["params"]["required"][0], "text");

    let stats = muster(&["stats", "echo", "--json", "--bus", &url]);
    let v: Value = serde_json::from_str(&stdout(&stats)).unwrap();
    let shout = &v[0]["methods"]["shout"];
    assert!(shout["num_requests"].as_u64().unwrap() >= 5, "{v}");
    assert!(shout["num_errors"].as_u64().unwrap() >= 2, "{v}");
    assert!(shout["last_error"].as_str().is_some());
    assert!(shout["p99_us"].as_u64().unwrap() >= shout["p50_us"].as_u64().unwrap());
}

#[test]
fn call_without_a_bus_fails_fast_with_a_clear_error() {
    let url = free_bus_url();
    let started = Instant::now();
    let o = muster(&["call", "echo.shout", "{}", "--bus", &url]);
    assert_eq!(o.status.code(), Some(1));
    let e: Value = serde_json::from_str(&stderr(&o)).unwrap();
    assert_eq!(e["code"], -32001, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("no bus answered"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn bad_params_json_is_a_usage_error() {
    let o = muster(&["call", "echo.shout", "{nope", "--bus", "zmq://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not valid JSON"));
}

#[test]
fn a_failing_main_exits_non_zero() {
    // No bus: the producer's first publish fails, main returns the error.
    let url = free_bus_url();
    let o = muster(&[
        "__service",
        "producer",
        "-m",
        "--count",
        "1",
        "--interval_ms",
        "10",
        "--bus",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no bus takes events"), "{}", stderr(&o));
}

#[test]
fn main_mode_exits_0_when_main_returns() {
    let url = free_bus_url();
    let _bus = spawn_bus(&url);
    let o = muster(&[
        "__service",
        "producer",
        "-m",
        "--count",
        "3",
        "--interval_ms",
        "10",
        "--bus",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn durations_out_of_range_are_usage_errors_not_panics() {
    // `--every` took seconds as a float, and a huge one panicked in
    // `Duration::from_secs_f64`.
    let huge = "9".repeat(400);
    for args in [
        ["top", "--every", huge.as_str()],
        ["call", "--timeout", huge.as_str()],
    ] {
        let o = muster(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is not a valid duration"),
            "{}",
            stderr(&o)
        );
    }
}
