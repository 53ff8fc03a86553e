//! A caller that goes away stops the work it asked for, on the embedded
//! bus under `muster up`: Ctrl-C on `muster call` cancels the handler it
//! was waiting for, so does an HTTP client that hangs up on the gateway,
//! and when a service's process is killed, the calls it was making stop
//! where they run. Each handler would otherwise run for 30 s; the tests
//! give them 10.

use std::process::{Command, Stdio};
use std::time::Duration;

use muster_test::eventually;
use muster_test::host::{Host, test_service};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

fn service(name: &str) -> String {
    let bin = test_service(MUSTER);
    format!(
        "[[service]]\nname = \"{name}\"\nrun = [\"{bin}\", \"--greeting\", \"hi\", \"--log-level\", \"warn\"]\nenv = {{ TESTSVC_NAME = \"{name}\" }}\nbackoff = \"100ms\"\n"
    )
}

/// `service.method`'s requests running now and cancelled so far.
async fn running_and_cancelled(
    client: &muster::Client,
    service: &str,
    method: &str,
) -> Option<(u64, u64)> {
    let reports = client.stats(Some(service)).await.ok()?;
    let m = reports
        .into_iter()
        .flatten()
        .find_map(|r| r.methods.get(method).cloned())?;
    Some((m.in_flight, m.num_cancelled))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_muster_call_stops_the_handler() {
    let manifest = format!("[context]\nname = \"c\"\n{}", service("back"));
    let host = Host::up(MUSTER, "cancel-ctrl-c", &manifest).await;
    let client = host.client().await;
    muster_test::wait_registered(&client, "back", 1).await;
    let call = Command::new(MUSTER)
        .args([
            "call",
            "back.sleep",
            r#"{"ms": 30000}"#,
            "--timeout",
            "60s",
            "--bus",
            &host.bus,
        ])
        .current_dir(&host.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the call running", || async {
        let (running, _) = running_and_cancelled(&client, "back", "sleep").await?;
        (running == 1).then_some(())
    })
    .await;
    kill(Pid::from_raw(call.id() as i32), Signal::SIGINT).unwrap();
    let status = tokio::task::spawn_blocking(move || call.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    eventually(Duration::from_secs(10), "the handler cancelled", || async {
        let (running, cancelled) = running_and_cancelled(&client, "back", "sleep").await?;
        (running == 0 && cancelled == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_of_a_killed_service_stop_where_they_run() {
    let manifest = format!(
        "[context]\nname = \"k\"\n{}{}",
        service("front"),
        service("back")
    );
    let host = Host::up(MUSTER, "cancel-gone", &manifest).await;
    let client = host.client().await;
    muster_test::wait_registered(&client, "front", 1).await;
    muster_test::wait_registered(&client, "back", 1).await;
    let pid = host.wait_state("front", 0, "running").await.unwrap();
    // front's handler calls back.sleep, which would run for 30 s.
    let caller = client.clone();
    let call = tokio::spawn(async move {
        caller
            .call_with::<_, serde_json::Value>(
                "front.relay",
                &serde_json::json!({
                    "target": "back.sleep",
                    "params": {"ms": 30000},
                    "timeout_ms": 60000,
                }),
                muster::CallOptions::default().timeout(Duration::from_secs(60)),
            )
            .await
    });
    eventually(
        Duration::from_secs(10),
        "the nested call running",
        || async {
            let (running, _) = running_and_cancelled(&client, "back", "sleep").await?;
            (running == 1).then_some(())
        },
    )
    .await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    eventually(
        Duration::from_secs(10),
        "the dead caller's call cancelled",
        || async {
            let (running, cancelled) = running_and_cancelled(&client, "back", "sleep").await?;
            (running == 0 && cancelled == 1).then_some(())
        },
    )
    .await;
    call.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_client_that_hangs_up_stops_the_handler() {
    let http = muster_test::host::free_http();
    let manifest = format!(
        "[host]\nhttp = \"{http}\"\n[context]\nname = \"g\"\n{}",
        service("back")
    );
    let host = Host::up(MUSTER, "cancel-gateway", &manifest).await;
    let client = host.client().await;
    muster_test::wait_registered(&client, "back", 1).await;
    let token = std::fs::read_to_string(host.dir.join(".muster/token")).unwrap();
    let body = r#"{"ms": 30000}"#;
    let request = format!(
        "POST /call/back.sleep HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {}\r\nX-Muster-Timeout-Ms: 60000\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    let mut conn = std::net::TcpStream::connect(&http).unwrap();
    std::io::Write::write_all(&mut conn, request.as_bytes()).unwrap();
    eventually(Duration::from_secs(10), "the call running", || async {
        let (running, _) = running_and_cancelled(&client, "back", "sleep").await?;
        (running == 1).then_some(())
    })
    .await;
    // The HTTP client hangs up without waiting for its answer.
    drop(conn);
    eventually(Duration::from_secs(10), "the handler cancelled", || async {
        let (running, cancelled) = running_and_cancelled(&client, "back", "sleep").await?;
        (running == 0 && cancelled == 1).then_some(())
    })
    .await;
}
