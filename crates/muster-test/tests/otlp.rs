//! Spans exported over OTLP: two services in processes of their own, with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a receiver this test runs,
//! which reads what arrives with the OpenTelemetry project's protobuf
//! types. A call joining a given trace reaches `front`, whose handler
//! calls `back`: both spans arrive, in that trace, `front` a child of the
//! given span and `back` of `front`'s, with the RPC attributes and each
//! service's name.
//!
//! The tree of one request through the HTTP gateway of `muster up`, on the
//! embedded bus and on Redis: the gateway's request bears a
//! `traceparent`; `front` calls `middle`, which enqueues a job that `back`
//! consumes, publishing an event that `front` hears. Its four spans
//! arrive in the request's trace, each the child of the one before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

const SERVICE: &str = env!("CARGO_BIN_EXE_muster-test-service");

/// A span as received, with the name of the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .and_then(|v| match v {
            AnyValue::StringValue(s) => Some(s),
            _ => None,
        })
}

/// An OTLP/HTTP receiver on a free port: `POST /v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .as_ref()
                        .and_then(|r| text(&r.attributes, "service.name"))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            kept.lock().unwrap().push(Received {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse: all taken.
                Vec::<u8>::new()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

fn spawn_service(name: &str, bus: &str, otlp: &str) -> muster_test::Proc {
    let mut c = std::process::Command::new(SERVICE);
    c.args(["--bus", bus, "--greeting", "hi", "--log-level", "warn"])
        .env("TESTSVC_NAME", name)
        .env("TESTSVC_LISTEN", "traced.*")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        // Send each batch soon, instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    muster_test::Proc::spawn(name, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_call_and_its_nested_call_reach_the_receiver_in_one_trace() {
    let (otlp, spans) = receiver().await;
    let bus = muster_test::free_bus_url();
    let _bus = muster_test::start_bus(&bus).await;
    let _front = spawn_service("front", &bus, &otlp);
    let _back = spawn_service("back", &bus, &otlp);
    let client = muster::Client::connect(&bus).await.unwrap();
    muster_test::wait_registered(&client, "front", 1).await;
    muster_test::wait_registered(&client, "back", 1).await;

    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer: u64 = client
        .call_with(
            "front.relay",
            &serde_json::json!({"target": "back.sleep", "params": {"ms": 1}}),
            muster::CallOptions::default().traceparent(given),
        )
        .await
        .unwrap();
    assert_eq!(answer, 1);

    let got = muster_test::eventually(Duration::from_secs(20), "two spans exported", || {
        let spans = spans.clone();
        async move {
            let all = spans.lock().unwrap().clone();
            (all.len() >= 2).then_some(all)
        }
    })
    .await;
    let find = |service: &str| {
        got.iter()
            .find(|r| r.service == service)
            .unwrap_or_else(|| panic!("no span of {service}: {got:?}"))
            .span
            .clone()
    };
    let (front, back) = (find("front"), find("back"));
    let trace_id = hex(&front.trace_id);
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&back.trace_id), trace_id, "one trace");
    assert_eq!(
        hex(&front.parent_span_id),
        "00f067aa0ba902b7",
        "the given span"
    );
    assert_eq!(back.parent_span_id, front.span_id, "back is front's child");
    assert_ne!(back.span_id, front.span_id);
    assert_eq!(front.name, "front/relay");
    assert_eq!(back.name, "back/sleep");
    for (span, service, method) in [(&front, "front", "relay"), (&back, "back", "sleep")] {
        assert_server_span(span, service, method);
    }
    // The nested call ran inside the outer one.
    assert!(back.start_time_unix_nano >= front.start_time_unix_nano);

    // An event published by front's handler: each listener's handling is
    // a consumer span, a child of the handler that published it.
    spans.lock().unwrap().clear();
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    // The bus's forwarder may not have the subscriptions yet: announce
    // until a consumer span arrives, then until the spans of the
    // announcements that the consumers heard have arrived too.
    let (announces, consumers) =
        muster_test::eventually(Duration::from_secs(20), "a consumer span", || async {
            let all = spans.lock().unwrap().clone();
            let announces: Vec<_> = all
                .iter()
                .filter(|r| r.span.name == "front/announce")
                .map(|r| r.span.clone())
                .collect();
            let consumers: Vec<_> = all
                .iter()
                .filter(|r| r.span.kind == SpanKind::Consumer as i32)
                .map(|r| r.span.clone())
                .collect();
            if !consumers.is_empty()
                && consumers
                    .iter()
                    .all(|c| announces.iter().any(|a| a.span_id == c.parent_span_id))
            {
                return Some((announces, consumers));
            }
            if consumers.is_empty() {
                let () = client
                    .call_with(
                        "front.announce",
                        &serde_json::json!({"topic": "traced.news"}),
                        muster::CallOptions::default().traceparent(given),
                    )
                    .await
                    .unwrap();
            }
            None
        })
        .await;
    for a in &announces {
        assert_eq!(hex(&a.trace_id), "0af7651916cd43dd8448eb211c80319c");
    }
    for c in &consumers {
        assert_eq!(hex(&c.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert!(
            announces.iter().any(|a| a.span_id == c.parent_span_id),
            "a child of a publishing handler's span"
        );
        assert_eq!(c.name, "process traced.news");
        assert_eq!(
            text(&c.attributes, "messaging.destination.name").as_deref(),
            Some("traced.news")
        );
        assert_eq!(
            text(&c.attributes, "messaging.operation.type").as_deref(),
            Some("process")
        );
    }
}

/// A request's span: kind server, with the RPC attributes.
fn assert_server_span(span: &Span, service: &str, method: &str) {
    assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
    for (key, value) in [
        ("rpc.system", "jsonrpc"),
        ("rpc.service", service),
        ("rpc.method", method),
    ] {
        assert_eq!(text(&span.attributes, key).as_deref(), Some(value), "{key}");
    }
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `muster` binary beside the test service (`cargo test --workspace`
/// builds both).
fn muster_bin() -> String {
    muster_test::host::binary_beside(SERVICE, "muster")
}

/// Three services under one host, each exporting to `otlp`.
fn tree_services(otlp: &str) -> String {
    let service = |name: &str, env: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nrun = [\"{SERVICE}\", \"--greeting\", \"hi\", \"--log-level\", \"warn\"]\nenv = {{ TESTSVC_NAME = \"{name}\", OTEL_EXPORTER_OTLP_ENDPOINT = \"{otlp}\", OTEL_BSP_SCHEDULE_DELAY = \"100\"{env} }}\n"
        )
    };
    [
        service("front", ", TESTSVC_LISTEN = \"traced.*\""),
        service("middle", ""),
        service(
            "back",
            ", TESTSVC_CONSUME = \"traced-jobs\", TESTSVC_CONSUME_PUBLISH = \"traced.done\"",
        ),
    ]
    .concat()
}

const TREE_TRACE: &str = "7bf92f3577b34da6a3ce929d0e0e4736";
const TREE_PARENT: &str = "10f067aa0ba902b7";

/// The spans of one request's tree, found by their parent links: the
/// event's handling in `front`, the job's in `back` before it, the
/// enqueuing call to `middle` before that, and `front`'s call under the
/// gateway's request.
fn tree(all: &[Received]) -> Option<[Span; 4]> {
    let parent_of = |child: &Received, name: &str, service: &str| {
        all.iter().find(|r| {
            r.span.span_id == child.span.parent_span_id
                && r.span.name == name
                && r.service == service
        })
    };
    all.iter()
        .filter(|r| r.span.name == "process traced.done" && r.service == "front")
        .find_map(|event| {
            let job = parent_of(event, "process traced-jobs", "back")?;
            let enqueue = parent_of(job, "middle/enqueue", "middle")?;
            let relay = parent_of(enqueue, "front/relay", "front")?;
            (hex(&relay.span.parent_span_id) == TREE_PARENT).then(|| {
                [
                    relay.span.clone(),
                    enqueue.span.clone(),
                    job.span.clone(),
                    event.span.clone(),
                ]
            })
        })
}

async fn a_request_its_job_and_its_event_are_one_trace(
    host: &muster_test::host::Host,
    http: &str,
    spans: &Arc<Mutex<Vec<Received>>>,
) {
    let client = host.client().await;
    for name in ["front", "middle", "back"] {
        muster_test::wait_registered(&client, name, 1).await;
    }
    let token = std::fs::read_to_string(host.dir.join(".muster/token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let traceparent = format!("00-{TREE_TRACE}-{TREE_PARENT}-01");
    let body =
        r#"{"target": "middle.enqueue", "params": {"queue": "traced-jobs", "job": {"n": 1}}}"#;
    // The event's subscription may still be on its way through the bus:
    // send the request again every 2 s until a whole tree has arrived.
    let mut job_ids = Vec::new();
    let mut last_sent: Option<std::time::Instant> = None;
    let [relay, enqueue, job, event] =
        muster_test::eventually(Duration::from_secs(40), "the spans of a whole tree", || {
            let found = tree(&spans.lock().unwrap());
            if found.is_none() && last_sent.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
                let (code, answer) = muster_test::host::http_with(
                    "POST",
                    http,
                    "/call/front.relay",
                    &[("Authorization", &auth), ("traceparent", &traceparent)],
                    body,
                );
                assert_eq!(code, 200, "{answer}");
                let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
                job_ids.push(answer["result"].as_str().expect("the job's id").to_owned());
                last_sent = Some(std::time::Instant::now());
            }
            std::future::ready(found)
        })
        .await;
    for span in [&relay, &enqueue, &job, &event] {
        assert_eq!(hex(&span.trace_id), TREE_TRACE, "one trace: {span:?}");
    }
    for (span, service, method) in [(&relay, "front", "relay"), (&enqueue, "middle", "enqueue")] {
        assert_server_span(span, service, method);
    }
    for (span, destination) in [(&job, "traced-jobs"), (&event, "traced.done")] {
        assert_eq!(span.kind, SpanKind::Consumer as i32);
        assert_eq!(
            text(&span.attributes, "messaging.system").as_deref(),
            Some("muster")
        );
        assert_eq!(
            text(&span.attributes, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            text(&span.attributes, "messaging.destination.name").as_deref(),
            Some(destination)
        );
    }
    let message_id = text(&job.attributes, "messaging.message.id").expect("the job's id");
    assert!(
        job_ids.contains(&message_id),
        "the job span names a job the gateway's call enqueued: {message_id} not in {job_ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_the_gateway_its_job_and_its_event_are_one_trace_on_the_embedded_bus() {
    let (otlp, spans) = receiver().await;
    let http = muster_test::host::free_http();
    let manifest = format!(
        "[host]\nhttp = \"{http}\"\n[context]\nname = \"tree\"\n{}",
        tree_services(&otlp)
    );
    let host = muster_test::host::Host::up(&muster_bin(), "trace-tree", &manifest).await;
    a_request_its_job_and_its_event_are_one_trace(&host, &http, &spans).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_the_gateway_its_job_and_its_event_are_one_trace_on_redis() {
    let test = "a_request_through_the_gateway_its_job_and_its_event_are_one_trace_on_redis";
    let Some(base) = muster_test::broker_url("MUSTER_TEST_REDIS", test) else {
        return;
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let bus = format!(
        "{base}{sep}prefix=tr{:x}",
        muster::id::random_u64() & 0xff_ffff
    );
    let (otlp, spans) = receiver().await;
    let http = muster_test::host::free_http();
    let dir = muster_test::host::tempdir("trace-tree-redis");
    std::fs::write(
        dir.join("muster.toml"),
        format!(
            "[host]\nbus = \"{bus}\"\nhttp = \"{http}\"\n[context]\nname = \"tree\"\n{}",
            tree_services(&otlp)
        ),
    )
    .unwrap();
    let host = muster_test::host::Host::start(&muster_bin(), dir, bus).await;
    a_request_its_job_and_its_event_are_one_trace(&host, &http, &spans).await;
}
