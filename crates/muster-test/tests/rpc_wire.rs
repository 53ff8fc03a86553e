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

fn error_of(frames: &[Bytes]) -> Value {
    let body: Value = serde_json::from_slice(&frames[2]).expect("reply body is JSON");
    body["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_coded_errors_or_are_dropped() {
    let (bus, client, url) = bus_and_client().await;
    let _svc = Proc::spawn("svc", {
        let mut c = std::process::Command::new(BIN);
        c.args([
            "--bus",
            &url,
            "--greeting",
            "hi",
            "--max-message-size",
            "4096",
        ]);
        c
    });
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
