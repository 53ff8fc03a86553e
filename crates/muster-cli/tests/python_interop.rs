//! docs/protocol.md is enough to interoperate: a Python program with pyzmq
//! calls a muster service and serves a method that muster calls.
//!
//! Without python3 + pyzmq the test prints why it is skipped; with
//! `MUSTER_REQUIRE_PYTHON=1` (set by `.ci/run`) a missing pyzmq fails it.

use std::process::{Command, Stdio};
use std::time::Duration;

use muster::Client;
use muster_test::{Proc, eventually, free_bus_url, wait_registered};
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/interop.py");

fn pyzmq_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import zmq"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("MUSTER_REQUIRE_PYTHON").is_none(),
            "MUSTER_REQUIRE_PYTHON is set but python3 with pyzmq is not available"
        );
        muster_test::skipped(
            "python_calls_muster_and_muster_calls_python",
            "python3 with pyzmq not found (pip install pyzmq)",
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_calls_muster_and_muster_calls_python() {
    if !pyzmq_available() {
        return;
    }
    let url = free_bus_url();
    let registry = url.replace("zmq://", "tcp://");
    let _bus = Proc::spawn("bus", {
        let mut c = Command::new(MUSTER);
        c.args(["bus", "--listen", &url, "--log-level", "warn"])
            .args(["--queue-store", "memory"])
            .stdout(Stdio::null());
        c
    });
    let _echo = Proc::spawn("echo", {
        let mut c = Command::new(MUSTER);
        c.args(["__service", "echo", "--bus", &url, "--log-level", "warn"]);
        c
    });
    let client = Client::connect(&url).await.unwrap();
    wait_registered(&client, "echo", 1).await;

    // Python → muster.
    let out = Command::new("python3")
        .args([
            SCRIPT,
            "call",
            &registry,
            "echo.shout",
            r#"{"text":"py","times":3}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"text": "pypypy"}));
    let out = Command::new("python3")
        .args([SCRIPT, "call", &registry, "echo.shout", r#"{"times":"x"}"#])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], -32602);
    assert_eq!(v["data"]["path"], "times");

    // muster → Python.
    let _py = Proc::spawn("python service", {
        let mut c = Command::new("python3");
        c.args([SCRIPT, "serve", &registry]).stdout(Stdio::null());
        c
    });
    wait_registered(&client, "pyecho", 1).await;
    let r: String = eventually(Duration::from_secs(5), "pyecho answers", || async {
        client.call("pyecho.upper", &json!("hello")).await.ok()
    })
    .await;
    assert_eq!(r, "HELLO");
    let e = client
        .call::<_, String>("pyecho.upper", &json!(5))
        .await
        .unwrap_err();
    assert_eq!(e.code, -32602);
    let o = Command::new(MUSTER)
        .args(["call", "pyecho.upper", r#""cli""#, "--bus", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), r#""CLI""#);
}
