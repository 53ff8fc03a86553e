//! Plain clients of the brokers, with no muster code: what
//! docs/protocol.md promises to any AMQP or Redis program.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use muster::prelude::*;
use muster::queue::{QueueCommand, QueueReply};
use muster_test::{broker_url, eventually};

fn ns() -> String {
    format!("i{:x}", muster::id::random_u64() & 0xff_ffff)
}

#[derive(Deserialize, JsonSchema)]
struct Job {
    n: u32,
}

/// A service that records the `n` of every job of `queue`.
async fn recorder(url: &str, queue: &str) -> (muster::ServiceHandle, Arc<Mutex<Vec<u32>>>) {
    let got: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = got.clone();
    let h = Service::new("recorder")
        .consume(queue, move |Args(j): Args<Job>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(j.n);
                Ok::<_, RpcError>(())
            }
        })
        .start(muster::bus::connect(url, None).await.unwrap())
        .await
        .unwrap();
    (h, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_plain_json_job_on_the_default_exchange_is_consumed() {
    let Some(url) = broker_url("MUSTER_TEST_AMQP", "interop::amqp_plain_job") else {
        return;
    };
    let queue = format!("plain-{}", ns());
    let (h, got) = recorder(&url, &queue).await;
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // What a foreign producer typically does: declare durable, publish.
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for body in [&br#"{"n": 41}"#[..], b"not json at all"] {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(10), "the plain job", || async {
        (got.lock().unwrap().as_slice() == [41]).then_some(())
    })
    .await;
    let transport = muster::bus::connect(&url, None).await.unwrap();
    let dead = eventually(
        Duration::from_secs(10),
        "the bad body dead-lettered",
        || async {
            match transport
                .queue_command(&format!("{queue}.dead"), QueueCommand::Peek { count: 5 })
                .await
                .ok()?
            {
                QueueReply::Jobs(j) if !j.is_empty() => Some(j),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(dead[0].body.as_ref(), b"not json at all");
    assert!(
        dead[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("cannot decode"),
        "{dead:?}"
    );
    h.stop().await;
    let _ = conn.close(0, "done".into()).await;
}

#[derive(Deserialize, Serialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_plain_jsonrpc_request_is_answered_on_reply_to() {
    let Some(base) = broker_url("MUSTER_TEST_AMQP", "interop::amqp_plain_rpc") else {
        return;
    };
    let exchange = ns();
    let url = format!("{base}?exchange={exchange}");
    let h = Service::new("calc")
        .rpc("add", |Args(x): Args<Add>| async move {
            Ok::<_, RpcError>(x.a + x.b)
        })
        .start(muster::bus::connect(&url, None).await.unwrap())
        .await
        .unwrap();
    let conn = Connection::connect(&base, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut replies = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "plain-client".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let requests = [
        (
            "c-1",
            r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":7}"#,
        ),
        (
            "c-2",
            r#"{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":"x"},"id":8}"#,
        ),
    ];
    for (corr, body) in requests {
        ch.basic_publish(
            exchange.as_str().into(),
            "calc.add".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id(corr.into())
                .with_content_type("application/json".into()),
        )
        .await
        .unwrap();
    }
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("a reply within 10 s")
            .unwrap()
            .unwrap();
        let corr = d.properties.correlation_id().clone().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        answers.insert(corr.as_str().to_owned(), body);
    }
    assert_eq!(
        answers["c-1"],
        serde_json::json!({"jsonrpc": "2.0", "result": 5, "id": 7})
    );
    assert_eq!(answers["c-2"]["error"]["code"], -32602);
    assert_eq!(answers["c-2"]["error"]["data"]["path"], "b");
    assert_eq!(answers["c-2"]["id"], 8);
    h.stop().await;
    let _ = conn.close(0, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_plain_xadd_job_is_consumed() {
    let Some(base) = broker_url("MUSTER_TEST_REDIS", "interop::redis_plain_job") else {
        return;
    };
    let prefix = ns();
    let url = format!("{base}?prefix={prefix}");
    let (h, got) = recorder(&url, "jobs").await;
    let client = redis::Client::open(base.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:q:jobs"))
        .arg("*")
        .arg("body")
        .arg(r#"{"n": 12}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the plain job", || async {
        (got.lock().unwrap().as_slice() == [12]).then_some(())
    })
    .await;
    h.stop().await;
}
