//! Nobody on the machine can pose as the host or a service (issue 15): one
//! test per attack on a running host, each refused and logged while the
//! legitimate service keeps working (`docs/security.md`).
//!
//! The attacker is a process of the test: it reaches the bus's ports on
//! 127.0.0.1 like any local user, without the host's state directory, or
//! with a credential of its own (`muster credential`), which is inside the
//! trust domain but is not the host and not the instance it attacks.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use muster::Client;
use muster_core::auth::Credential;
use muster_test::host::{Host, free_http, http};
use muster_test::registry::RawRegistry;
use muster_test::{eventually, wait_registered};
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

fn echo(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"echo\"\nrun = [\"{MUSTER}\", \"__service\", \"echo\", \"--log-level\", \"warn\"]\n{extra}\n"
    )
}

/// `muster credential NAME` in the host's directory: a credential inside
/// the trust domain, which is not the host's nor any instance's.
fn user_credential(host: &Host, name: &str) -> Credential {
    let o = Command::new(MUSTER)
        .args(["credential", name])
        .current_dir(&host.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Credential::parse(String::from_utf8_lossy(&o.stdout).trim()).unwrap()
}

fn refused(reply: &Value) -> bool {
    reply["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("unauthorized"))
}

fn call_echo(bus: &str) -> bool {
    Command::new(MUSTER)
        .args(["call", "echo.shout", r#"{"text":"ok"}"#, "--bus", bus])
        .output()
        .unwrap()
        .status
        .success()
}

async fn echo_host(tag: &str, extra: &str) -> (Host, muster::registry::InstanceInfo) {
    let manifest = format!(
        "[host]\nhttp = \"off\"\n[context]\nname = \"sec\"\n{}",
        echo(extra)
    );
    let host = Host::up(MUSTER, tag, &manifest).await;
    host.wait_state("echo", 0, "running").await;
    let client = Client::connect(&host.bus).await.unwrap();
    let info = wait_registered(&client, "echo", 1).await.remove(0);
    (host, info)
}

fn registration(service: &str, instance: &str) -> Value {
    json!({"service": service, "instance": instance, "endpoint": "tcp://127.0.0.1:9",
        "methods": [{"name": "status"}, {"name": "shout"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_but_the_host_registers_muster_host() {
    let (host, _) = echo_host("sec-impostor", "").await;
    for credential in [None, Some(user_credential(&host, "mallory"))] {
        let mut a = RawRegistry::connect(&host.bus, credential).await;
        let r = a
            .call("register", &registration("muster.host", "muster.host-evil"))
            .await;
        assert!(refused(&r), "{r}");
    }
    let client = Client::connect(&host.bus).await.unwrap();
    let hosts: Vec<_> = client
        .instances()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.service == "muster.host")
        .collect();
    assert_eq!(hosts.len(), 1, "only the real host: {hosts:?}");
    assert!(host.ctl(&["status"]).status.success());
    let log = host.log();
    assert!(
        log.contains("registry request refused") && log.contains("127.0.0.1"),
        "refusals are logged with the peer's address:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_never_hands_its_token_to_an_impostor_host() {
    // A bus of the attacker's own (open), where it serves `muster.host`.
    let bus = muster_test::free_bus_url();
    let mut bus_cmd = Command::new(MUSTER);
    bus_cmd.args(["bus", "--listen", &bus, "--open", "--log-level", "warn"]);
    bus_cmd.args(["--queue-store", "memory"]);
    let _bus = muster_test::Proc::spawn("open bus", bus_cmd);
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = std::sync::Arc::default();
    let record = seen.clone();
    let impostor = muster::Service::new(muster::registry::HOST_SERVICE)
        .rpc("challenge", move |muster::Args(v): muster::Args<Value>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(v);
                Ok::<_, muster::RpcError>(
                    json!({"host_nonce": "00".repeat(16), "proof": "00".repeat(32)}),
                )
            }
        })
        .rpc("status", {
            let record = seen.clone();
            move |muster::Args(v): muster::Args<Value>| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(v);
                    Ok::<_, muster::RpcError>(json!({"transactions": []}))
                }
            }
        });
    let transport = muster::bus::connect(&bus, None).await.unwrap();
    let served = impostor
        .start_with(transport, muster::StartOptions::default())
        .await
        .unwrap();
    let dir = muster_test::host::tempdir("sec-ctl");
    std::fs::create_dir_all(dir.join(".muster")).unwrap();
    let token = "7".repeat(64);
    std::fs::write(dir.join(".muster/token"), &token).unwrap();
    let o = Command::new(MUSTER)
        .args(["ctl", "status", "--bus", &bus])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("not this host"), "{err}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "only the challenge was asked: {seen:?}");
    assert!(
        !seen[0].to_string().contains(&token),
        "the token never travels"
    );
    served.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_id_cannot_be_taken_or_unregistered_by_another() {
    let (host, echo) = echo_host("sec-hijack", "").await;
    for credential in [None, Some(user_credential(&host, "mallory"))] {
        let mut a = RawRegistry::connect(&host.bus, credential).await;
        // Hijack: the same id at the attacker's endpoint.
        let r = a
            .call("register", &registration("echo", &echo.instance))
            .await;
        assert!(refused(&r), "{r}");
        // Forged goodbyes, in a loop.
        for _ in 0..20 {
            let r = a
                .call("unregister", &json!({"instance": echo.instance}))
                .await;
            assert!(refused(&r), "{r}");
        }
        // Forged progress: would fire echo's on_update trigger.
        let r = a
            .call(
                "update",
                &json!({"service": "echo", "instance": echo.instance, "status": "forged"}),
            )
            .await;
        assert!(refused(&r), "{r}");
    }
    let client = Client::connect(&host.bus).await.unwrap();
    let now = wait_registered(&client, "echo", 1).await;
    assert_eq!(now[0].endpoint, echo.endpoint, "the real endpoint is kept");
    assert!((0..10).all(|_| call_echo(&host.bus)), "every call answered");
}

/// A goodbye for an instance the bus no longer lists is acknowledged: an
/// instance stopping often says it after the host has evicted it (its
/// process ended first), or says it again when the first answer was slow.
/// Refused, it was logged as a forged goodbye, six times for each 1,000
/// instances stopped together. Someone else's live instance is still
/// refused (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_for_an_instance_already_gone_is_acknowledged() {
    let (host, echo) = echo_host("sec-gone", "").await;
    let mut a = RawRegistry::connect(&host.bus, Some(user_credential(&host, "late"))).await;
    let r = a
        .call("unregister", &json!({"instance": "echo-7-gone00"}))
        .await;
    assert_eq!(r, json!({}), "{r}");
    let r = a
        .call("unregister", &json!({"instance": echo.instance}))
        .await;
    assert!(refused(&r), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_update_event_fires_no_trigger() {
    // echo's on_update stops echo: a forged update would stop it.
    let (host, echo) = echo_host("sec-update", "on_update = { stop = [\"echo\"] }").await;
    let client = Client::connect(&host.bus).await.unwrap();
    for _ in 0..5 {
        client
            .publish(
                "muster.update",
                &json!({"service": "echo", "instance": echo.instance, "status": "forged"}),
            )
            .await
            .unwrap();
    }
    // Nothing must happen: a real update reaches the host within
    // milliseconds, so half a second of nothing is the evidence (there is
    // no event to wait for).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, state, _) = host.slot("echo", 0);
    assert_eq!(
        state, "running",
        "a published muster.update is not a report"
    );
    assert!(call_echo(&host.bus));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_cannot_be_squatted_to_silence_a_schedule() {
    let ticker = std::path::Path::new(MUSTER)
        .with_file_name("muster-test-ticker")
        .to_string_lossy()
        .into_owned();
    let manifest = format!(
        "[host]\nhttp = \"off\"\n[context]\nname = \"sec\"\n{}[[service]]\nname = \"ticker\"\nrun = [\"{ticker}\", \"--log-level\", \"warn\"]\n",
        echo("")
    );
    let host = Host::up(MUSTER, "sec-claims", &manifest).await;
    host.wait_state("ticker", 0, "running").await;
    let client = Client::connect(&host.bus).await.unwrap();
    let mut ticks = client.subscribe(&["ticker.tick"]).await.unwrap();
    // Squat the next 30 fire times, as a stranger and as another
    // credential with an instance of its own.
    let mallory = user_credential(&host, "mallory");
    let mut own = RawRegistry::connect(&host.bus, Some(mallory)).await;
    let r = own
        .call("register", &registration("squatter", "squatter-1"))
        .await;
    assert!(
        r.get("error").is_none(),
        "a credential registers its own name: {r}"
    );
    let mut stranger = RawRegistry::connect(&host.bus, None).await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for s in now_s..now_s + 30 {
        let key = format!("ticker/schedule:* * * * * */{}", s * 1000);
        for (a, holder) in [(&mut own, "squatter-1"), (&mut stranger, "squatter-1")] {
            let r = a
                .call(
                    "claim",
                    &json!({"key": key, "holder": holder, "ttl_ms": 86_400_000}),
                )
                .await;
            assert!(refused(&r), "{r}");
        }
    }
    // The ticker still fires every second.
    let mut seconds = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while seconds.len() < 3 {
            let e = ticks.recv().await.unwrap();
            seconds.insert(e.payload["second"].as_u64().unwrap());
        }
    })
    .await
    .expect("the schedule keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_foreign_host_headers_and_shows_nothing_without_the_token() {
    let addr = free_http();
    let manifest = format!(
        "[host]\nhttp = \"{addr}\"\n[context]\nname = \"sec\"\n{}",
        echo("")
    );
    let host = Host::up(MUSTER, "sec-http", &manifest).await;
    host.wait_state("echo", 0, "running").await;
    let token = std::fs::read_to_string(host.dir.join(".muster/token")).unwrap();
    let token = token.trim();
    let get = |path: &str, host_header: &str, auth: bool| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let auth = if auth {
            format!("Authorization: Bearer {token}\r\n")
        } else {
            String::new()
        };
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    // DNS rebinding: a page of evil.example whose name now points here.
    let out = get("/api/status", "evil.example:80", true);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(host.log().contains("Host is not a name of this host"));
    // Instance details need the token.
    for path in ["/api/status", "/api/top", "/api/events", "/metrics"] {
        let out = get(
            path,
            &format!("localhost:{}", addr.rsplit(':').next().unwrap()),
            false,
        );
        assert!(out.starts_with("HTTP/1.1 401"), "{path}: {out}");
        let out = get(path, &addr, true);
        assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    }
    // A refusal is logged with the caller's address.
    let refused = eventually(Duration::from_secs(10), "the refusal logged", || async {
        let log = host.log();
        log.lines()
            .find(|l| l.contains("wrong or missing token") && l.contains("/api/top"))
            .map(str::to_owned)
    })
    .await;
    assert!(refused.contains("peer=\"127.0.0.1:"), "{refused}");
    let page = get("/", &addr, false);
    for h in [
        "content-security-policy",
        "x-frame-options: DENY",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
    ] {
        assert!(
            page.to_ascii_lowercase().contains(&h.to_ascii_lowercase()),
            "{h}: {page}"
        );
    }
    let (code, _) = http("GET", &addr, "/openapi.json", None, "");
    assert_eq!(code, 200, "the method list shows no instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_and_credentials_stay_off_the_command_line() {
    let (host, echo) = echo_host("sec-files", "").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = host.dir.join(".muster");
    assert_eq!(mode(&state), 0o700);
    for f in ["token", "bus.secret", "transactions.json"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    let logs = state.join("logs");
    assert_eq!(mode(&logs), 0o700);
    let txn = host.transaction();
    assert_eq!(mode(&logs.join(&txn)), 0o700);
    assert_eq!(mode(&logs.join(&txn).join("echo.0.log")), 0o600);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", echo.pid)).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", echo.pid)).unwrap();
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(&environ, b"MUSTER_CREDENTIAL=instance:"),
        "the instance has its credential"
    );
    assert!(
        !has(&cmdline, b"instance:"),
        "and it is not on its command line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_may_require_its_callers_credentials() {
    let manifest = format!(
        "[host]\nhttp = \"off\"\n[context]\nname = \"sec\"\n[[service]]\nname = \"testsvc\"\nrun = [\"{}\", \"--log-level\", \"warn\"]\nenv = {{ MUSTER_GREETING = \"hi\", TESTSVC_REQUIRE_AUTH = \"1\" }}\n",
        muster_test::host::test_service(MUSTER)
    );
    let host = Host::up(MUSTER, "sec-callers", &manifest).await;
    host.wait_state("testsvc", 0, "running").await;
    let elsewhere = muster_test::host::tempdir("sec-callers-elsewhere");
    let call = |dir: &std::path::Path, credential: Option<String>| {
        let mut c = Command::new(MUSTER);
        c.args(["call", "testsvc.hello", r#""eve""#, "--bus", &host.bus])
            .current_dir(dir)
            .env_remove("MUSTER_CREDENTIAL");
        if let Some(cred) = credential {
            c.env("MUSTER_CREDENTIAL", cred);
        }
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // No credential: refused.
    let (code, _, err) = call(&elsewhere, None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("-32004") && err.contains("requires a bus credential"),
        "{err}"
    );
    // A wrong one: refused.
    let forged = format!("user:mallory {}", "ab".repeat(32));
    let (code, _, err) = call(&elsewhere, Some(forged));
    assert_eq!(code, Some(1), "{err}");
    // A credential of the bus (a user's, or the host directory's secret):
    // served.
    let user = user_credential(&host, "alice").to_env_value();
    assert_eq!(call(&elsewhere, Some(user)).1, r#""hi, eve""#);
    assert_eq!(call(&host.dir, None).1, r#""hi, eve""#);
    let _ = std::fs::remove_dir_all(&elsewhere);
}
