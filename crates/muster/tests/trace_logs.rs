//! A handler's log lines carry the trace id of its request (the `rpc`
//! span's `trace_id`), so the lines of one request's tree can be found
//! in every service's log.

use std::sync::{Arc, Mutex};

use muster::prelude::*;
use muster::testing::TestBus;

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_handlers_log_lines_carry_its_trace_id() {
    use tracing_subscriber::layer::SubscriberExt;
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(move || writer.clone()),
    );
    // This test's runtime runs on this thread: the handler logs here.
    let _default = tracing::subscriber::set_default(subscriber);

    let bus = TestBus::new();
    let _svc = bus
        .start(Service::new("logged").rpc("work", || async {
            tracing::info!("working on it");
            Ok::<_, RpcError>(())
        }))
        .await
        .unwrap();
    let () = bus
        .client()
        .call_with(
            "logged.work",
            &(),
            CallOptions::default()
                .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        )
        .await
        .unwrap();

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|l: &serde_json::Value| l["fields"]["message"] == "working on it")
        .unwrap_or_else(|| panic!("no line of the handler in {text}"));
    assert_eq!(
        line["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "{line}"
    );
    assert_eq!(line["span"]["method"], "logged.work", "{line}");
}
