//! Bad input on the wire never crashes an instance and never leaves a
//! caller hanging: raw ZeroMQ frames sent straight to a service endpoint.

use std::time::Duration;

use bytes::Bytes;
use muster::Client;
use muster_test::{Proc, bus_and_client, free_bus_url, start_bus, wait_registered};
use omq_tokio::{Message, Options, Socket, SocketType};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_muster-test-service");

async fn dealer(endpoint: &str) -> Socket {
    let s = Socket::new(SocketType::Dealer, Options::default());
    s.connect(endpoint).await.unwrap();
    s
}

async fn reply(s: &Socket) -> Option<Vec<Bytes>> {
    let msg = tokio::time::timeout(Duration::from_secs(2), s.recv())
        .await
        .ok()?
        .ok()?;
    Some((0..msg.len()).filter_map(|i| msg.part_bytes(i)).collect())
}

fn msg(parts: &[&str]) -> Message {
    Message::multipart(parts.iter().map(|p| Bytes::copy_from_slice(p.as_bytes())))
}

/// The test service, greeting "hi", with a message limit of 4,096 bytes.
fn small_limit_service(url: &str) -> Proc {
    let mut c = std::process::Command::new(BIN);
    c.args([
        "--bus",
        url,
        "--greeting",
        "hi",
        "--max-message-size",
        "4096",
    ]);
    Proc::spawn("svc", c)
}

fn error_of(frames: &[Bytes]) -> Value {
    let body: Value = serde_json::from_slice(&frames[2]).expect("reply body is JSON");
    body["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_coded_errors_or_are_dropped() {
    let (bus, client, url) = bus_and_client().await;
    let _svc = small_limit_service(&url);
    let info = wait_registered(&client, "testsvc", 1).await;
    let s = dealer(&info[0].endpoint).await;
    let header = |id: &str| {
        format!(r#"{{"id":"{id}","kind":"request","service":"testsvc","method":"hello"}}"#)
    };

    // Garbage: one frame, random bytes, an empty message part: dropped.
    for junk in [
        Message::single("garbage"),
        Message::multipart([&[0xff_u8, 0, 1][..], &b"\x00\x01"[..], &b""[..]]),
    ] {
        s.send(junk).await.unwrap();
    }
    // A muster message whose header is not JSON: answered -32600 without an
    // id (there is none to echo), so a caller never waits in vain.
    s.send(Message::multipart(["MUSTER/1", "{not json", "x"]))
        .await
        .unwrap();
    let r = reply(&s).await.expect("an unreadable header is answered");
    assert_eq!(error_of(&r)["code"], -32600);

    // Another protocol version, with a readable header: answered -32600.
    s.send(msg(&[
        "MUSTER/9",
        &header("v9"),
        r#"{"jsonrpc":"2.0","method":"hello","params":"x"}"#,
    ]))
    .await
    .unwrap();
    let r = reply(&s).await.expect("version mismatch is answered");
    assert_eq!(&r[0][..], b"MUSTER/1");
    let e = error_of(&r);
    assert_eq!(e["code"], -32600, "{e}");
    assert!(e["message"].as_str().unwrap().contains("version"), "{e}");

    // Invalid JSON body: -32700.
    s.send(msg(&["MUSTER/1", &header("bad-json"), "{oops"]))
        .await
        .unwrap();
    let r = reply(&s).await.expect("bad JSON is answered");
    assert_eq!(error_of(&r)["code"], -32700);

    // Wrong type: -32602 with the path.
    s.send(msg(&[
        "MUSTER/1",
        &header("wrong-type"),
        r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":42}"#,
    ]))
    .await
    .unwrap();
    let r = reply(&s).await.expect("wrong type is answered");
    assert_eq!(error_of(&r)["code"], -32602);

    // Not a request: -32600.
    s.send(Message::multipart([
        "MUSTER/1",
        r#"{"id":"k","kind":"event"}"#,
        "null",
    ]))
    .await
    .unwrap();
    let r = reply(&s).await.expect("wrong kind is answered");
    assert_eq!(error_of(&r)["code"], -32600);

    // Unknown content type: -32600.
    s.send(Message::multipart([
        "MUSTER/1",
        r#"{"id":"ct","kind":"request","service":"testsvc","method":"hello","content_type":"text/x"}"#,
        "\"a\"",
    ]))
    .await
    .unwrap();
    let r = reply(&s).await.expect("unknown content type is answered");
    assert_eq!(error_of(&r)["code"], -32600);

    // Over the configured limit (4096 bytes): -32003.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"hello","params":"{}"}}"#,
        "x".repeat(10_000)
    );
    s.send(msg(&["MUSTER/1", &header("big"), &big]))
        .await
        .unwrap();
    let r = reply(&s).await.expect("oversize is answered");
    assert_eq!(error_of(&r)["code"], -32003);

    // Still serving.
    let ok: String = client.call("testsvc.hello", &json!("eve")).await.unwrap();
    assert_eq!(ok, "hi, eve");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_survives_garbage() {
    let url = free_bus_url();
    let bus = start_bus(&url).await;
    let registry = url.replace("zmq://", "tcp://");
    let s = dealer(&registry).await;
    for junk in [
        Message::single("x"),
        Message::multipart(["MUSTER/1", "{}", ""]),
        Message::multipart([
            "MUSTER/1",
            r#"{"kind":"control","method":"register","id":"1"}"#,
            "[1,2]",
        ]),
        Message::multipart([
            "MUSTER/1",
            r#"{"kind":"control","method":"heartbeat","id":"2"}"#,
            "nope",
        ]),
    ] {
        s.send(junk).await.unwrap();
    }
    // The malformed registration is refused with a reason.
    let r = reply(&s).await.expect("bad registration answered");
    let body: Value = serde_json::from_slice(&r[2]).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("bad registration"),
        "{body}"
    );
    let client = Client::connect(&url).await.unwrap();
    assert!(client.instances().await.unwrap().is_empty());
    assert!(bus.stats().bad_messages >= 1);
    bus.stop().await;
}

/// One frame, `MUSTER/1\n<header>\n<body>` (`docs/protocol.md`).
fn one_frame(tag: &str, header: &str, body: &str) -> Message {
    Message::single(Bytes::from(format!("{tag}\n{header}\n{body}")))
}

/// The header and body of a one-frame reply.
fn blob_reply(frames: &[Bytes]) -> (Value, Value) {
    assert_eq!(
        frames.len(),
        1,
        "a one-frame request is answered in one frame"
    );
    let mut lines = frames[0].splitn(3, |b| *b == b'\n');
    assert_eq!(lines.next(), Some(&b"MUSTER/1"[..]));
    let header = serde_json::from_slice(lines.next().expect("a header")).expect("JSON header");
    let body = serde_json::from_slice(lines.next().expect("a body")).expect("JSON body");
    (header, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_requests_are_answered_in_kind() {
    let (bus, client, url) = bus_and_client().await;
    let _svc = small_limit_service(&url);
    let info = wait_registered(&client, "testsvc", 1).await;
    assert!(
        info[0].one_frame,
        "a muster instance says it reads one frame"
    );
    let s = dealer(&info[0].endpoint).await;
    let header = |id: &str| {
        format!(r#"{{"id":"{id}","kind":"request","service":"testsvc","method":"hello"}}"#)
    };

    s.send(one_frame(
        "MUSTER/1",
        &header("o1"),
        r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":"ann"}"#,
    ))
    .await
    .unwrap();
    let (h, body) = blob_reply(&reply(&s).await.expect("answered"));
    assert_eq!(
        (h["id"].as_str(), h["kind"].as_str()),
        (Some("o1"), Some("reply"))
    );
    assert_eq!(body["result"], "hi, ann");

    // Errors come back in one frame too, with the request's id.
    for (tag, id, body, code) in [
        ("MUSTER/1", "bad-json", "{oops".to_owned(), -32700),
        (
            "MUSTER/9",
            "v9",
            r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":"x"}"#.to_owned(),
            -32600,
        ),
        (
            "MUSTER/1",
            "big",
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"hello","params":"{}"}}"#,
                "x".repeat(10_000)
            ),
            -32003,
        ),
    ] {
        s.send(one_frame(tag, &header(id), &body)).await.unwrap();
        let (h, body) = blob_reply(&reply(&s).await.expect("an error is answered"));
        assert_eq!(h["id"], id);
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    // A single frame that is not muster's is dropped, unanswered.
    s.send(Message::single("MUSTER/1")).await.unwrap();
    assert!(reply(&s).await.is_none());

    // Three frames are still answered in three frames.
    s.send(msg(&[
        "MUSTER/1",
        &header("t1"),
        r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":"bo"}"#,
    ]))
    .await
    .unwrap();
    let r = reply(&s).await.expect("answered");
    assert_eq!(r.len(), 3);
    let body: Value = serde_json::from_slice(&r[2]).unwrap();
    assert_eq!(body["result"], "hi, bo");
    bus.stop().await;
}

/// An instance that does not say it reads one frame (an older muster, or
/// another language's, as `tests/python/interop.py`) gets three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_send_three_frames_to_an_instance_that_does_not_read_one() {
    let url = free_bus_url();
    let bus = start_bus(&url).await;
    let router = Socket::new(SocketType::Router, Options::default());
    let endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let mut registry = muster_test::registry::RawRegistry::connect(&url, None).await;
    let answer = registry
        .call(
            "register",
            &json!({"service": "old", "instance": "old-1", "endpoint": endpoint,
                    "methods": [{"name": "m"}]}),
        )
        .await;
    assert!(answer.get("error").is_none_or(Value::is_null), "{answer}");
    let client = Client::connect(&url).await.unwrap();
    let call = tokio::spawn(async move { client.call::<_, String>("old.m", &"x").await });
    let request = tokio::time::timeout(Duration::from_secs(20), router.recv())
        .await
        .expect("the request arrives")
        .unwrap();
    let parts: Vec<Bytes> = (0..request.len())
        .filter_map(|i| request.part_bytes(i))
        .collect();
    assert_eq!(parts.len(), 4, "identity, tag, header, body");
    assert_eq!(&parts[1][..], b"MUSTER/1");
    let header: Value = serde_json::from_slice(&parts[2]).unwrap();
    let reply_header = json!({"id": header["id"], "kind": "reply"}).to_string();
    router
        .send(Message::multipart([
            parts[0].clone(),
            Bytes::from_static(b"MUSTER/1"),
            Bytes::from(reply_header),
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":"old ok"}"#),
        ]))
        .await
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap(), "old ok");
    bus.stop().await;
}
