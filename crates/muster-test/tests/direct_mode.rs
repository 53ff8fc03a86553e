//! Direct mode: two processes talk point to point from an addresses file,
//! with no bus at all.

use std::time::Duration;

use muster::{CallOptions, Client};
use muster_test::{Proc, eventually, free_port_base};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_muster-test-service");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_without_a_bus() {
    let port = free_port_base();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let server = dir.join("server.json");
    std::fs::write(&server, format!(r#"{{"bind": "tcp://127.0.0.1:{port}"}}"#)).unwrap();
    let caller = dir.join("caller.json");
    std::fs::write(
        &caller,
        format!(r#"{{"services": {{"testsvc": ["tcp://127.0.0.1:{port}"]}}}}"#),
    )
    .unwrap();

    let _svc = Proc::spawn("svc", {
        let mut c = std::process::Command::new(BIN);
        c.args(["-a", server.to_str().unwrap(), "--greeting", "direct"]);
        c
    });
    let transport = muster::bus::connect("zmq://unused:1", Some(&caller))
        .await
        .unwrap();
    let client = Client::new(transport);
    let r: String = eventually(Duration::from_secs(10), "direct call", || async {
        client
            .call_with(
                "testsvc.hello",
                &json!("zed"),
                CallOptions::default().timeout(Duration::from_millis(300)),
            )
            .await
            .ok()
    })
    .await;
    assert_eq!(r, "direct, zed");
    let e = client
        .call::<_, String>("other.x", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code, -32601, "services not in the file are unknown: {e}");
}

#[test]
fn a_malformed_addresses_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"bnd": "tcp://127.0.0.1:1"}"#).unwrap();
    let o = std::process::Command::new(BIN)
        .args(["-a", bad.to_str().unwrap(), "--greeting", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown field `bnd`"), "{err}");
}
