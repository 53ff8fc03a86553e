//! NATS micro compatibility, both ways (`MUSTER_TEST_NATS`): a muster
//! service driven purely by `$SRV` requests and plain NATS requests (no
//! muster code on the calling side), a service written with
//! `async-nats`'s own service API listed and called through muster, and
//! events from a plain NATS publisher.

use std::time::Duration;

use futures_util::StreamExt;
use muster::prelude::*;
use muster_test::broker_url;
use serde_json::{Value, json};

#[derive(Deserialize, Serialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

async fn add(Args(x): Args<Add>) -> Result<i64, RpcError> {
    Ok(x.a + x.b)
}

fn ns() -> String {
    format!("t{:x}", muster::id::random_u64() & 0xff_ffff)
}

async fn ask(nats: &async_nats::Client, subject: String, payload: &str) -> async_nats::Message {
    nats.request(subject, payload.to_owned().into())
        .await
        .unwrap_or_else(|e| panic!("plain NATS request: {e}"))
}

fn json_of(m: &async_nats::Message) -> Value {
    serde_json::from_slice(&m.payload)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&m.payload)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muster_service_is_driven_through_srv_by_a_plain_nats_client() {
    let Some(base) = broker_url("MUSTER_TEST_NATS", "nats_micro::srv") else {
        return;
    };
    let ns = ns();
    let url = format!("{base}?prefix={ns}");
    let svc = format!("calc-{ns}");
    let h = Service::new(&svc)
        .version("1.2.3")
        .rpc("add", add)
        .start(muster::bus::connect(&url, None).await.unwrap())
        .await
        .unwrap();
    let nats = async_nats::connect(&base).await.unwrap();

    let ping = json_of(&ask(&nats, format!("$SRV.PING.{svc}"), "").await);
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response", "{ping}");
    assert_eq!(
        (&ping["name"], &ping["version"]),
        (&json!(svc), &json!("1.2.3"))
    );
    let id = ping["id"].as_str().unwrap().to_owned();

    let info = json_of(&ask(&nats, format!("$SRV.INFO.{svc}.{id}"), "").await);
    assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
    let endpoint = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "add")
        .unwrap_or_else(|| panic!("add is an endpoint: {info}"))
        .clone();
    assert_eq!(endpoint["queue_group"], "q");
    let schema: Value = serde_json::from_str(
        endpoint["metadata"]["muster.params_schema"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(schema["properties"]["a"].is_object(), "{schema}");
    let subject = endpoint["subject"].as_str().unwrap().to_owned();

    // Called as any micro endpoint is: the params in, the bare result out.
    let sum = ask(&nats, subject.clone(), r#"{"a": 2, "b": 3}"#).await;
    assert!(sum.headers.is_none(), "no error headers");
    assert_eq!(json_of(&sum), json!(5));
    let bad = ask(&nats, subject.clone(), r#"{"a": "x", "b": 1}"#).await;
    let headers = bad.headers.clone().expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "-32602"
    );
    assert!(
        !headers
            .get("Nats-Service-Error")
            .unwrap()
            .as_str()
            .is_empty()
    );
    let not_json = ask(&nats, subject, "two and three").await;
    assert_eq!(
        not_json
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "-32700"
    );

    let stats = json_of(&ask(&nats, format!("$SRV.STATS.{svc}"), "").await);
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response", "{stats}");
    let add_stats = &stats["endpoints"][0];
    assert_eq!(add_stats["name"], "add");
    assert_eq!(add_stats["num_requests"], 2, "{stats}");
    assert_eq!(add_stats["num_errors"], 1, "{stats}");
    assert!(stats["started"].as_str().unwrap().contains('T'));

    // `$SRV.PING` to everyone reaches it too.
    let inbox = nats.new_inbox();
    let mut answers = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply("$SRV.PING", inbox, "".into())
        .await
        .unwrap();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = answers.next().await {
            if json_of(&m)["id"] == json!(id) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "our instance answers $SRV.PING");
    h.stop().await;
}

/// An error message is text from a handler: a line break in it must not
/// reach the NATS protocol, where it would end the header early and the
/// rest would be read as commands of muster's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_break_in_an_error_does_not_break_the_micro_reply() {
    let Some(base) = broker_url("MUSTER_TEST_NATS", "nats_micro::line_break") else {
        return;
    };
    let ns = ns();
    let url = format!("{base}?prefix={ns}");
    let svc = format!("liar-{ns}");
    let h = Service::new(&svc)
        .rpc("fail", |Args(_): Args<Value>| async move {
            Err::<Value, _>(RpcError::new(
                4000,
                "first line\r\nPUB injected 2\r\nhi\r\n",
            ))
        })
        .rpc("add", add)
        .start(muster::bus::connect(&url, None).await.unwrap())
        .await
        .unwrap();
    let nats = async_nats::connect(&base).await.unwrap();
    let mut injected = nats.subscribe("injected").await.unwrap();
    nats.flush().await.unwrap();
    let failed = ask(&nats, format!("{ns}.rpc.{svc}.fail"), "{}").await;
    let headers = failed.headers.clone().expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "4000"
    );
    let message = headers.get("Nats-Service-Error").unwrap().as_str();
    assert!(message.starts_with("first line"), "{message:?}");
    assert!(!message.contains(['\r', '\n']), "{message:?}");
    // muster's connection is whole: it still answers, and nothing was
    // published on the subject the message named.
    let sum = ask(&nats, format!("{ns}.rpc.{svc}.add"), r#"{"a": 1, "b": 1}"#).await;
    assert_eq!(json_of(&sum), json!(2));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), injected.next())
            .await
            .is_err(),
        "a message was injected"
    );
    h.stop().await;
}

/// The wire format of `docs/protocol.md` ("NATS"), spoken by hand: a
/// muster request is one payload, `MUSTER/1`, the header and the JSON-RPC
/// body on three lines, and so is its reply. One whose header cannot be
/// read gets the micro error headers, and the instance goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_framed_by_hand_is_answered_in_the_same_framing() {
    let Some(base) = broker_url("MUSTER_TEST_NATS", "nats_micro::framing") else {
        return;
    };
    let ns = ns();
    let url = format!("{base}?prefix={ns}");
    let svc = format!("framed-{ns}");
    let h = Service::new(&svc)
        .rpc("add", add)
        .start(muster::bus::connect(&url, None).await.unwrap())
        .await
        .unwrap();
    let nats = async_nats::connect(&base).await.unwrap();
    let subject = format!("{ns}.rpc.{svc}.add");
    let request = format!(
        "MUSTER/1\n{}\n{}",
        json!({"id": "r1", "kind": "request", "service": svc, "method": "add"}),
        json!({"jsonrpc": "2.0", "method": "add", "params": {"a": 2, "b": 3}, "id": 7})
    );
    let reply = ask(&nats, subject.clone(), &request).await;
    let text = String::from_utf8_lossy(&reply.payload).into_owned();
    let mut lines = text.splitn(3, '\n');
    assert_eq!(lines.next(), Some("MUSTER/1"), "{text}");
    let header: Value = serde_json::from_str(lines.next().unwrap_or_default()).unwrap();
    assert_eq!(
        (&header["kind"], &header["id"]),
        (&json!("reply"), &json!("r1"))
    );
    let body: Value = serde_json::from_str(lines.next().unwrap_or_default()).unwrap();
    assert_eq!(body, json!({"jsonrpc": "2.0", "result": 5, "id": 7}));

    let broken = ask(&nats, subject.clone(), "MUSTER/1\n{not a header\n{}").await;
    let headers = broken.headers.clone().expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "-32600"
    );
    let again = ask(&nats, subject, &request).await;
    assert_eq!(again.payload, reply.payload);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_written_with_async_nats_is_listed_and_called_through_muster() {
    use async_nats::service::ServiceExt;
    let Some(base) = broker_url("MUSTER_TEST_NATS", "nats_micro::plain_service") else {
        return;
    };
    let ns = ns();
    let name = format!("adder-{ns}");
    let nats = async_nats::connect(&base).await.unwrap();
    let service = nats
        .service_builder()
        .description("written without muster")
        .start(&name, "0.9.0")
        .await
        .unwrap();
    let mut endpoint = service.endpoint("add").await.unwrap();
    let serving = tokio::spawn(async move {
        while let Some(req) = endpoint.next().await {
            let answer = match serde_json::from_slice::<Value>(&req.message.payload) {
                Ok(v) if v["a"].is_i64() => Ok(json!(
                    v["a"].as_i64().unwrap() + v["b"].as_i64().unwrap_or(0)
                )
                .to_string()
                .into()),
                _ => Err(async_nats::service::error::Error {
                    status: "a and b, please".into(),
                    code: 400,
                }),
            };
            let _ = req.respond(answer).await;
        }
    });

    let client = Client::new(
        muster::bus::connect(&format!("{base}?prefix={ns}"), None)
            .await
            .unwrap(),
    );
    let listed = muster_test::wait_registered(&client, &name, 1).await;
    assert_eq!(listed[0].version, "0.9.0");
    assert!(listed[0].method("add").is_some(), "{:?}", listed[0]);
    let sum: i64 = client
        .call(&format!("{name}.add"), &json!({"a": 40, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum, 42);
    let refused = client
        .call::<_, i64>(&format!("{name}.add"), &json!({"x": 1}))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code, refused.message.as_str()),
        (400, "a and b, please")
    );
    let unknown = client
        .call::<_, i64>(&format!("{name}.subtract"), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(unknown.code, -32601, "{unknown}");
    serving.abort();
}

/// A plain NATS publish on an event subject reaches a muster subscriber
/// as an event of the subject's topic; one whose `Muster-Header` cannot be
/// read is dropped (and logged) without ending the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_publish_is_an_event_and_a_broken_header_is_skipped() {
    let Some(base) = broker_url("MUSTER_TEST_NATS", "nats_micro::plain_events") else {
        return;
    };
    let ns = ns();
    let url = format!("{base}?prefix={ns}");
    let client = muster::Client::new(muster::bus::connect(&url, None).await.unwrap());
    let mut sub = client.subscribe(&["orders.*"]).await.unwrap();
    let nats = async_nats::connect(&base).await.unwrap();
    nats.publish(format!("{ns}.ev.orders.new"), r#"{"n":1}"#.into())
        .await
        .unwrap();
    let mut broken = async_nats::HeaderMap::new();
    broken.insert("Muster-Header", "{not json");
    nats.publish_with_headers(format!("{ns}.ev.orders.new"), broken, "2".into())
        .await
        .unwrap();
    // On the same connection as the two before it: NATS keeps one
    // connection's order, but not the order between two connections.
    nats.publish(format!("{ns}.ev.orders.paid"), r#"{"n":3}"#.into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("an event within 10 s")
            .expect("the subscription is live");
        got.push((e.topic, e.payload));
    }
    assert_eq!(
        got,
        vec![
            ("orders.new".to_owned(), json!({"n": 1})),
            ("orders.paid".to_owned(), json!({"n": 3})),
        ]
    );
    sub.cancel().await;
}
