//! The embedded bus with CURVE (`docs/fleet.md`): a host given the
//! fleet's keys admits a client whose key it knows; a client without
//! CURVE, or with a key the fleet does not know, is refused by the bus and
//! by the instance's own RPC endpoint, nothing it sends reaches a service,
//! and the host logs the refusal with the peer's address. A client with
//! the keys but a wrong token is refused by the host's control service.
//! Plain TCP beyond loopback is refused unless asked for.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use muster_test::host::tempdir;
use muster_test::{Proc, eventually, free_bus_url};
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

/// `muster ARGS` in `dir`, with the keys directory `keys` (or none).
fn muster(dir: &Path, keys: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(MUSTER);
    c.args(args).current_dir(dir).stdin(Stdio::null());
    c.env_remove("MUSTER_CURVE");
    if let Some(k) = keys {
        c.env("MUSTER_CURVE", dir.join(k));
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Calls to `shout` the echo instances have counted.
fn shouts(dir: &Path, bus: &str) -> u64 {
    let out = ok(&muster(
        dir,
        Some("alice"),
        &["stats", "echo", "--json", "--bus", bus],
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["methods"]["shout"]["num_requests"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curve_admits_the_fleet_and_refuses_everyone_else() {
    let dir = tempdir("curve");
    ok(&muster(&dir, None, &["keys", "init", "fleet"]));
    ok(&muster(
        &dir,
        None,
        &[
            "keys", "client", "alice", "--fleet", "fleet", "--name", "alice",
        ],
    ));
    // Mallory knows the fleet's public key (it is public) but has a key
    // of another fleet's making, which this one has not admitted.
    ok(&muster(&dir, None, &["keys", "init", "other"]));
    ok(&muster(
        &dir,
        None,
        &[
            "keys", "client", "mallory", "--fleet", "other", "--name", "mallory",
        ],
    ));
    std::fs::copy(dir.join("fleet/fleet.pub"), dir.join("mallory/fleet.pub")).unwrap();

    let bus = free_bus_url();
    std::fs::write(
        dir.join("muster.toml"),
        format!(
            "[host]\nbus = \"{bus}\"\ncurve = \"fleet\"\nhttp = \"off\"\n\n[context]\nname = \"c\"\n\n[[service]]\nname = \"echo\"\nrun = [\"{MUSTER}\", \"__service\", \"echo\", \"--log-level\", \"warn\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("host.log")).unwrap();
    let mut c = Command::new(MUSTER);
    c.args(["up", "muster.toml"])
        .current_dir(&dir)
        .env_remove("MUSTER_CURVE")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _host = Proc::spawn("muster up with CURVE", c);

    // Alice, admitted: the host answers, echo runs and is called.
    eventually(
        Duration::from_secs(30),
        "echo running, seen by alice",
        || async {
            let o = muster(
                &dir,
                Some("alice"),
                &["ctl", "status", "--json", "--bus", &bus],
            );
            let v: Value = serde_json::from_slice(&o.stdout).ok()?;
            (v["transactions"][0]["services"][0]["instances"][0]["state"] == "running")
                .then_some(())
        },
    )
    .await;
    let shout = |keys: Option<&str>, extra: &[&str]| {
        let mut args = vec!["call", "echo.shout", r#"{"text":"hi"}"#, "--timeout", "2s"];
        args.extend_from_slice(extra);
        muster(&dir, keys, &args)
    };
    assert!(ok(&shout(Some("alice"), &["--bus", &bus])).contains("hi"));
    assert_eq!(shouts(&dir, &bus), 1);

    // The instance's own endpoint, as alice reads it from the registry.
    let listed: Value = serde_json::from_str(&ok(&muster(
        &dir,
        Some("alice"),
        &["ls", "--json", "--bus", &bus],
    )))
    .unwrap();
    let endpoint = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == "echo")
        .and_then(|i| i["endpoint"].as_str())
        .unwrap()
        .to_owned();
    std::fs::write(
        dir.join("direct.json"),
        json!({ "services": { "echo": [endpoint] } }).to_string(),
    )
    .unwrap();

    // Without CURVE, and with an unknown key: refused by the bus and by
    // the instance; each gets an error, none hangs.
    for keys in [None, Some("mallory")] {
        let o = shout(keys, &["--bus", &bus]);
        assert!(!o.status.success(), "{keys:?} was answered through the bus");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no bus answered"), "{keys:?}: {err}");
        let o = shout(keys, &["-a", "direct.json"]);
        assert!(!o.status.success(), "{keys:?} was answered by the instance");
        let o = muster(&dir, keys, &["pub", "probe.intruder", "{}", "--bus", &bus]);
        assert!(!o.status.success(), "{keys:?} published");
    }
    // Alice's own direct call still works (so the refusals above were not
    // the addresses file's fault), and the service counted only hers.
    assert!(ok(&shout(Some("alice"), &["-a", "direct.json"])).contains("hi"));
    assert_eq!(shouts(&dir, &bus), 2, "only alice's calls reached echo");

    // The refusals are in the host's log, with the peer's address.
    let host_log = eventually(Duration::from_secs(10), "the refusal logged", || async {
        let text = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
        text.contains("CURVE: refused").then_some(text)
    })
    .await;
    assert!(host_log.contains("peer=\"127.0.0.1"), "{host_log}");

    // The right keys and a wrong token: the control service refuses.
    std::fs::write(dir.join("wrong-token"), "0".repeat(64)).unwrap();
    let o = muster(
        &dir,
        Some("alice"),
        &[
            "ctl",
            "status",
            "--token-file",
            "wrong-token",
            "--bus",
            &bus,
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("token"), "{err}");
}

#[test]
fn plain_tcp_beyond_loopback_is_refused_unless_asked_for() {
    let dir = tempdir("plain-tcp");
    let o = Command::new(MUSTER)
        .args(["bus", "--open", "--queue-store", "memory", "--listen"])
        .arg(format!("zmq://0.0.0.0:{}", muster_test::free_port_base()))
        .current_dir(&dir)
        .env_remove("MUSTER_CURVE")
        .env_remove("MUSTER_PLAIN_TCP")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("without CURVE") && err.contains("MUSTER_PLAIN_TCP=1"),
        "{err}"
    );
}
