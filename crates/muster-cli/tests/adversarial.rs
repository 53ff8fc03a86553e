//! The default bus against an attacker and a careless client: one test per
//! class of input that once broke it (issue 14). Each case runs against a
//! real host (`muster up`) or instance, with real sockets, and ends by
//! checking that the bus and the instances still answer `muster call` and
//! that the host's memory stayed within `HOST_RSS_BOUND` (documented in
//! `docs/guarantees.md`, "Limits").
//!
//! Past 600 lines because each class of attack is a test here, side by
//! side, sharing the helpers at the top.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use muster::Client;
use muster_test::host::{Host, WAIT, free_http, http, test_service};
use muster_test::registry::RawRegistry;
use muster_test::zmtp::RawPeer;
use muster_test::{Proc, eventually, wait_registered};
use omq_tokio::{Message, Options, Socket, SocketType};
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

/// Resident memory a host may reach in these cases (it starts near 40 MB).
const HOST_RSS_BOUND_KIB: u64 = 200 * 1024;

fn echo() -> String {
    format!(
        "[[service]]\nname = \"echo\"\nrun = [\"{MUSTER}\", \"__service\", \"echo\", \"--log-level\", \"warn\"]\n"
    )
}

async fn host(tag: &str, host_extra: &str, services: &str) -> Host {
    let manifest =
        format!("[host]\nhttp = \"off\"\n{host_extra}\n[context]\nname = \"adv\"\n{services}");
    let host = Host::up(MUSTER, tag, &manifest).await;
    for name in ["echo", "testsvc"] {
        if services.contains(&format!("name = \"{name}\"")) {
            host.wait_state(name, 0, "running").await;
        }
    }
    host
}

/// `muster call TARGET PARAMS --bus BUS`: (exit code, stdout, stderr).
fn call(bus: &str, target: &str, params: &str) -> (i32, String, String) {
    let o = Command::new(MUSTER)
        .args(["call", target, params, "--bus", bus])
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The bus still registers, forwards events and routes calls, and the host
/// stayed small.
async fn still_serving(host: &Host) {
    let (code, out, err) = call(&host.bus, "echo.shout", r#"{"text":"ok"}"#);
    assert_eq!(code, 0, "echo still answers: {out}{err}");
    assert_eq!(out.trim(), r#"{"text":"ok"}"#);
    let client = Client::connect(&host.bus).await.unwrap();
    let mut sub = client.subscribe(&["after.*"]).await.unwrap();
    client.publish("after.check", &1).await.unwrap();
    let got = tokio::time::timeout(WAIT, sub.recv()).await;
    assert!(
        matches!(got, Ok(Some(ref e)) if e.topic == "after.check"),
        "events still flow"
    );
    let rss = host.proc.rss_kib();
    eprintln!("host RSS {rss} KiB");
    assert!(
        rss < HOST_RSS_BOUND_KIB,
        "host RSS {rss} KiB over the bound"
    );
}

fn port_of(bus: &str, offset: u16) -> String {
    let (h, p) = bus.trim_start_matches("zmq://").rsplit_once(':').unwrap();
    format!("{h}:{}", p.parse::<u16>().unwrap() + offset)
}

fn frames(msg: &Message) -> Vec<Bytes> {
    (0..msg.len()).filter_map(|i| msg.part_bytes(i)).collect()
}

async fn dealer(endpoint: &str, options: Options) -> Socket {
    let s = Socket::new(SocketType::Dealer, options);
    s.connect(endpoint).await.unwrap();
    s
}

async fn endpoint_of(bus: &str, service: &str) -> String {
    let client = Client::connect(bus).await.unwrap();
    wait_registered(&client, service, 1).await[0]
        .endpoint
        .clone()
}

fn request(id: &str, method: &str, params: &Value) -> Message {
    let header = json!({"id": id, "kind": "request", "service": "x", "method": method});
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    Message::multipart([
        Bytes::from_static(b"MUSTER/1"),
        Bytes::from(header.to_string()),
        Bytes::from(body.to_string()),
    ])
}

// 1. The event forwarder and malformed subscription messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_subscription_messages_do_not_stop_events() {
    let host = host("adv-sub", "", &echo()).await;
    let outlet = port_of(&host.bus, 2);
    let mut peer = tokio::task::spawn_blocking(move || RawPeer::connect(&outlet, "XSUB"))
        .await
        .unwrap()
        .unwrap();
    tokio::task::spawn_blocking(move || {
        // An empty message, a multi-frame one, a first byte that is
        // neither subscribe nor unsubscribe.
        peer.send(&[]).unwrap();
        peer.send(&[b"\x01a", b"b"]).unwrap();
        peer.send(&[b"\x05nonsense"]).unwrap();
        peer.send(&[b"\x01"]).unwrap();
        peer
    })
    .await
    .unwrap();
    still_serving(&host).await;
    let (code, _, err) = call(&host.bus, "echo.shout", r#"{"text":"again"}"#);
    assert_eq!(code, 0, "{err}");
}

// 2. Decoders bound memory before allocating; bad header members are
// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_shared_header_costs_nothing_and_bad_headers_are_answered() {
    let host = host("adv-header", "", &echo()).await;
    // A subscriber process decodes what the bus forwards to it.
    let mut sub_cmd = Command::new(MUSTER);
    sub_cmd
        .args(["sub", "x.>", "--bus", &host.bus])
        .stdout(std::process::Stdio::null());
    let sub = Proc::spawn("muster sub", sub_cmd);
    let client = Client::connect(&host.bus).await.unwrap();
    let mut watcher = client.subscribe(&["x.>"]).await.unwrap();
    let publisher = Socket::new(SocketType::Pub, Options::default());
    publisher
        .connect(format!("tcp://{}", port_of(&host.bus, 1)).as_str())
        .await
        .unwrap();
    publisher
        .wait_subscribed(1, Duration::from_secs(5))
        .await
        .unwrap();
    // 1 MiB shared header over 10,000 bodies: 10 GB of copies once.
    let header = json!({"kind": "event", "topic": "x.y", "count": 10_000,
        "transaction": "t".repeat(1 << 20)});
    for _ in 0..5 {
        let mut parts = vec![
            Bytes::from_static(b"x.y"),
            Bytes::from_static(b"MUSTER/1"),
            Bytes::from(header.to_string()),
        ];
        parts.extend(std::iter::repeat_n(Bytes::from_static(b"1"), 10_000));
        publisher.send(Message::multipart(parts)).await.unwrap();
    }
    // The watcher's queue at the bus drops its oldest when the megabyte
    // messages overflow it, and "x.ok" may reach the bus before the last
    // of them: it is published until one arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    let e = loop {
        client.publish("x.ok", &"fine").await.unwrap();
        if let Ok(e) = tokio::time::timeout(Duration::from_millis(500), watcher.recv()).await {
            break e.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event after the oversized batches"
        );
    };
    assert_eq!(e.topic, "x.ok", "the oversized batch was refused whole");
    let sub_rss = sub.rss_kib();
    assert!(sub_rss < 100 * 1024, "subscriber RSS {sub_rss} KiB");

    // Header members out of range get -32600 with the request's id; a
    // deadline too far to represent is no deadline.
    let s = dealer(&endpoint_of(&host.bus, "echo").await, Options::default()).await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"shout","params":{"text":"a"}}"#;
    for (id, header) in [
        (
            "neg",
            r#"{"id":"neg","kind":"request","method":"shout","deadline_ms":-5}"#,
        ),
        (
            "count",
            r#"{"id":"count","kind":"request","method":"shout","count":4294967296}"#,
        ),
        (
            "float",
            r#"{"id":"float","kind":"request","method":"shout","deadline_ms":1e30}"#,
        ),
    ] {
        s.send(Message::multipart(["MUSTER/1", header, body]))
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await
            .unwrap_or_else(|_| panic!("{id}: no reply"))
            .unwrap();
        let r = frames(&r);
        let h: Value = serde_json::from_slice(&r[1]).unwrap();
        assert_eq!(h["id"], id);
        let b: Value = serde_json::from_slice(&r[2]).unwrap();
        assert_eq!(b["error"]["code"], -32600, "{id}: {b}");
    }
    s.send(Message::multipart([
        "MUSTER/1",
        r#"{"id":"huge","kind":"request","method":"shout","deadline_ms":18446744073709551615}"#,
        body,
    ]))
    .await
    .unwrap();
    let r = frames(&s.recv().await.unwrap());
    let b: Value = serde_json::from_slice(&r[2]).unwrap();
    assert_eq!(b["result"]["text"], "a", "{b}");
    s.send(Message::multipart(["MUSTER/1", "not json at all", body]))
        .await
        .unwrap();
    let r = frames(
        &tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await
            .expect("an unreadable header is answered")
            .unwrap(),
    );
    let b: Value = serde_json::from_slice(&r[2]).unwrap();
    assert_eq!(b["error"]["code"], -32600, "{b}");
    still_serving(&host).await;
}

// 4. A graceful stop answers or refuses every request it accepted: SIGTERM
// to the host while 100 pipelined requests for 4 MB replies are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_pipelined_request_with_large_replies() {
    let services = format!(
        "[[service]]\nname = \"testsvc\"\nrun = [\"{}\", \"--log-level\", \"warn\"]\nenv = {{ MUSTER_GREETING = \"hi\" }}\nstop_timeout = \"60s\"\n",
        test_service(MUSTER)
    );
    let mut host = host("adv-sigterm", "", &services).await;
    host.wait_state("testsvc", 0, "running").await;
    // A caller that takes its replies one at a time, as it handles them
    // (no read-ahead), at a steady 20 ms each: the last replies leave well
    // after the instance has finished its work.
    let options = Options {
        recv_hwm: 1,
        recv_buffer_size: Some(64 * 1024),
        ..Options::default()
    };
    let s = dealer(&endpoint_of(&host.bus, "testsvc").await, options).await;
    // 100 requests in flight, no deadline of the caller's own, 4 MB replies.
    for n in 0..100 {
        s.send(request(
            &n.to_string(),
            "blob",
            &json!({"bytes": 4 << 20, "ms": 300}),
        ))
        .await
        .unwrap();
    }
    // The signal goes once the instance has all 100 (finished or
    // running, by its `$stats`), however loaded the machine.
    let client = Client::connect(&host.bus).await.unwrap();
    eventually(WAIT, "all 100 requests reached the instance", || async {
        let reports = client.stats(Some("testsvc")).await.ok()?;
        let arrived: u64 = reports
            .into_iter()
            .flatten()
            .filter_map(|r| r.methods.get("blob").map(|m| m.num_requests + m.in_flight))
            .sum();
        (arrived >= 100).then_some(())
    })
    .await;
    host.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 100 {
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(30), s.recv()).await else {
            break;
        };
        let r = frames(&msg);
        let h: Value = serde_json::from_slice(&r[1]).unwrap();
        let b: Value = serde_json::from_slice(&r[2]).unwrap();
        let outcome = if b.get("result").is_some() {
            "result".to_owned()
        } else {
            b["error"]["code"].to_string()
        };
        answered.insert(h["id"].as_str().unwrap().to_owned(), outcome);
        // A slow reader on purpose (the case under test is a caller that
        // takes its large replies slowly while the instance stops), so
        // this one is about real time and cannot be an awaited condition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tally = std::collections::BTreeMap::new();
    for o in answered.values() {
        *tally.entry(o.clone()).or_insert(0) += 1;
    }
    eprintln!("outcomes of 100 requests: {tally:?}");
    assert_eq!(answered.len(), 100, "every request answered: {tally:?}");
    assert!(
        answered
            .values()
            .all(|o| o == "result" || o == "-32002" || o == "-32001"),
        "{tally:?}"
    );
    let status = host.proc.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
}

// 5. Memory is bounded in bytes: replies a caller never reads, replies over
// the size limit, queued jobs, registrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_never_reads_costs_bounded_memory_and_big_replies_are_refused() {
    let url = muster_test::free_bus_url();
    let _bus = muster_test::spawn_bus_process(MUSTER, &url);
    let mut c = Command::new(test_service(MUSTER));
    c.args(["--bus", &url, "--greeting", "hi", "--log-level", "warn"]);
    let svc = Proc::spawn("testsvc", c);
    let endpoint = endpoint_of(&url, "testsvc").await;
    let options = Options {
        recv_hwm: 1,
        recv_buffer_size: Some(4096),
        ..Options::default()
    };
    let s = dealer(&endpoint, options).await;
    // 400 replies of 1 MB nobody reads: 400 MB held if nothing bounded it.
    for n in 0..400 {
        s.send(request(&n.to_string(), "blob", &json!({"bytes": 1 << 20})))
            .await
            .unwrap();
    }
    let client = Client::connect(&url).await.unwrap();
    eventually(Duration::from_secs(120), "400 blobs made", || async {
        let stats = client.stats(Some("testsvc")).await.ok()?;
        let done = stats
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.methods.get("blob").map_or(0, |m| m.num_requests))
            .sum::<u64>();
        (done >= 400).then_some(())
    })
    .await;
    let rss = svc.rss_kib();
    eprintln!("instance RSS with 400 unread 1 MB replies: {rss} KiB");
    assert!(rss < 200 * 1024, "instance RSS {rss} KiB");
    drop(s);

    // A reply over the 8 MiB limit is refused, not sent.
    let (code, _, err) = call(&url, "testsvc.blob", r#"{"bytes": 10000000}"#);
    assert_eq!(code, 1);
    assert!(err.contains("-32003"), "{err}");
    let (code, out, err) = call(&url, "testsvc.hello", r#""eve""#);
    assert_eq!((code, out.trim()), (0, r#""hi, eve""#), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_bytes_and_registrations_are_bounded() {
    let host = host("adv-bytes", "queue_max_bytes = \"64MB\"", &echo()).await;
    let client = host.client().await;
    let job = "x".repeat(7 << 20);
    let mut taken = 0;
    let refused = loop {
        match client.enqueue("adv.big", &job).await {
            Ok(_) => taken += 1,
            Err(e) => break e,
        }
        assert!(taken < 100, "the queue took 100 jobs of 7 MB");
    };
    assert!(refused.to_string().contains("queues are full"), "{refused}");
    assert_eq!(taken, 9, "64 MB hold nine jobs of 7 MB");

    // A 1 MB registration is refused, whole: from a stranger for want of a
    // credential, and from a credential of this bus for its size.
    let before = host.proc.rss_kib();
    let record = json!({"service": "huge", "instance": "huge-1", "endpoint": "tcp://127.0.0.1:1",
        "methods": [{"name": "m", "params": {"description": "d".repeat(1 << 20)}}]});
    let secret = std::fs::read_to_string(host.dir.join(".muster/bus.secret")).unwrap();
    for credential in [
        None,
        Some(muster_core::auth::Credential::parse(&secret).unwrap()),
    ] {
        let signed = credential.is_some();
        let mut registry = RawRegistry::connect(&host.bus, credential).await;
        let b = registry.call("register", &record).await;
        let error = b["error"].as_str().unwrap_or_default();
        if signed {
            assert!(error.contains("over the limit"), "{b}");
        } else {
            assert!(error.starts_with("unauthorized"), "{b}");
        }
    }
    assert!(
        !client
            .instances()
            .await
            .unwrap()
            .iter()
            .any(|i| i.service == "huge")
    );
    let grew = host.proc.rss_kib().saturating_sub(before);
    assert!(grew < 20 * 1024, "the refused registration cost {grew} KiB");
    still_serving(&host).await;
}

// 6. Protocol edges a real client hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_edges() {
    let host = host("adv-edges", "", &echo()).await;
    // `list` with the current epoch and version: no `instances` member.
    let registry = Socket::new(SocketType::Dealer, Options::default());
    registry
        .connect(format!("tcp://{}", port_of(&host.bus, 0)).as_str())
        .await
        .unwrap();
    let list = |id: &str, body: &Value| {
        Message::multipart([
            Bytes::from_static(b"MUSTER/1"),
            Bytes::from(json!({"id": id, "kind": "control", "method": "list"}).to_string()),
            Bytes::from(body.to_string()),
        ])
    };
    registry.send(list("l1", &json!({}))).await.unwrap();
    let first: Value = serde_json::from_slice(&frames(&registry.recv().await.unwrap())[2]).unwrap();
    registry
        .send(list(
            "l2",
            &json!({"epoch": first["epoch"], "version": first["version"]}),
        ))
        .await
        .unwrap();
    let second: Value =
        serde_json::from_slice(&frames(&registry.recv().await.unwrap())[2]).unwrap();
    assert!(second.get("instances").is_none(), "{second}");

    // A missing field is named; a trailing optional positional param may
    // be left out.
    let (code, _, err) = call(&host.bus, "echo.shout", r#"{"times":2}"#);
    assert_eq!(code, 1);
    let e: Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(
        (e["code"].as_i64(), e["data"]["path"].as_str()),
        (Some(-32602), Some("text"))
    );
    let (code, out, err) = call(&host.bus, "echo.shout", r#"["hi"]"#);
    assert_eq!((code, out.trim()), (0, r#"{"text":"hi"}"#), "{err}");

    // A JSON-RPC notification runs and is not answered.
    let client = Client::connect(&host.bus).await.unwrap();
    let mut shouted = client.subscribe(&["echo.shouted"]).await.unwrap();
    let s = dealer(&endpoint_of(&host.bus, "echo").await, Options::default()).await;
    s.send(Message::multipart([
        "MUSTER/1",
        r#"{"id":"n1","kind":"request","method":"shout"}"#,
        r#"{"jsonrpc":"2.0","method":"shout","params":{"text":"quiet"}}"#,
    ]))
    .await
    .unwrap();
    let e = tokio::time::timeout(WAIT, shouted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.payload, "quiet", "the notification ran");
    s.send(request("r2", "shout", &json!({"text": "loud"})))
        .await
        .unwrap();
    let r = frames(&tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap());
    let h: Value = serde_json::from_slice(&r[1]).unwrap();
    assert_eq!(
        h["id"], "r2",
        "the first reply is the request's, not the notification's"
    );
    still_serving(&host).await;
}

// 6 and 7. The HTTP gateway and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_json_and_checks_the_token_first() {
    let addr = free_http();
    let manifest = format!(
        "[host]\nhttp = \"{addr}\"\nmonitor_every = \"200ms\"\n[context]\nname = \"adv\"\n{}",
        echo()
    );
    let host = Host::up(MUSTER, "adv-http", &manifest).await;
    host.wait_state("echo", 0, "running").await;
    let token = std::fs::read_to_string(host.dir.join(".muster/token")).unwrap();
    let token = token.trim();
    // No Content-Type, no token: 401 first, in JSON.
    let raw = |req: String| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let ctl = r#"{"service":"echo"}"#;
    let out = raw(format!(
        "POST /api/ctl/restart HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ctl}",
        ctl.len()
    ));
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.contains("application/json") && out.contains("-32004"),
        "{out}"
    );
    let out = raw(format!(
        "POST /api/ctl/restart HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ctl}",
        ctl.len()
    ));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (code, body) = http("GET", &addr, "/nope", None, "");
    assert_eq!(code, 404);
    assert!(body.contains("\"error\""), "{body}");
    // A bad deadline header is refused, not ignored.
    let out = raw(format!(
        "POST /call/echo.shout HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nX-Muster-Timeout-Ms: soon\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{{\"text\":\"a\"}}"
    ));
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("X-Muster-Timeout-Ms"), "{out}");

    // OpenAPI: 401, a required body, the limits the method declares.
    host.wait_state("echo", 0, "running").await;
    let doc = eventually(WAIT, "openapi with echo", || async {
        let (code, body) = http("GET", &addr, "/openapi.json", None, "");
        let doc: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && doc["paths"]["/call/echo.shout"].is_object()).then_some(doc)
    })
    .await;
    let op = &doc["paths"]["/call/echo.shout"]["post"];
    assert!(op["responses"]["401"].is_object(), "{op}");
    assert_eq!(op["requestBody"]["required"], true);
    let times = &op["requestBody"]["content"]["application/json"]["schema"]["properties"]["times"];
    assert_eq!(times["maximum"], 1000, "{times}");

    // Metrics in both formats, by Accept.
    let scrape = |accept: &str| {
        raw(format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        ))
    };
    let prom = eventually(WAIT, "metrics with method latencies", || async {
        let out = scrape("text/plain");
        out.contains("muster_method_latency_seconds_count")
            .then_some(out)
    })
    .await;
    assert!(prom.contains("text/plain; version=0.0.4"), "{prom}");
    assert!(prom.contains("# TYPE muster_instance_restarts_total counter"));
    assert!(!prom.contains("# EOF"));
    let om = scrape("application/openmetrics-text;version=1.0.0");
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.contains("# TYPE muster_instance_restarts counter"));
    assert!(om.contains("muster_method_latency_seconds_sum{"));
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    check_with_python_parsers(&prom, &om);
}

/// Both expositions through the Prometheus project's own Python parsers,
/// where `prometheus_client` is installed (`.ci/run` installs it).
fn check_with_python_parsers(prom: &str, om: &str) {
    let body = |r: &str| {
        r.split_once("\r\n\r\n")
            .map(|x| x.1.to_owned())
            .unwrap_or_default()
    };
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
p, o = sys.stdin.read().split("\n=====\n")
n = sum(1 for _ in prom(p)); m = sum(1 for _ in om(o))
print(n, m)
"#;
    let has = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var_os("MUSTER_REQUIRE_PYTHON").is_none(),
            "prometheus_client is required in CI"
        );
        muster_test::skipped(
            "the_gateway_answers_json_and_checks_the_token_first (python parsers)",
            "python3 -m pip install prometheus_client",
        );
        return;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Chunked bodies: keep the lines of the exposition itself.
    let clean = |b: String| {
        b.lines()
            .filter(|l| l.starts_with('#') || l.starts_with("muster_"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    let input = format!("{}\n=====\n{}", clean(body(prom)), clean(body(om)));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "a parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// 8. Manifest errors: one exit code, checked at load, said once.
#[test]
fn manifest_errors_exit_2_once_and_are_found_at_load() {
    let dir = muster_test::host::tempdir("adv-manifest");
    let run = |file: &str| {
        let o = Command::new(MUSTER)
            .args(["up", file, "--http", "off"])
            .current_dir(&dir)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run("missing.toml");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "said once: {err}");
    let base = "[context]\nname = \"c\"\n[[service]]\nname = \"a\"\n";
    std::fs::write(
        dir.join("cwd.toml"),
        format!("{base}run = [\"sh\"]\ncwd = \"/nonexistent\"\n"),
    )
    .unwrap();
    let (code, err) = run("cwd.toml");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cwd.toml:6: service[0].cwd: /nonexistent is not a directory"),
        "{err}"
    );
    std::fs::write(
        dir.join("cmd.toml"),
        format!("{base}run = [\"no-such-program-xyz\"]\n"),
    )
    .unwrap();
    let (code, err) = run("cmd.toml");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "cmd.toml:5: service[0].run: program \"no-such-program-xyz\" not found on PATH"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
