//! A poison job on the embedded bus, under `muster up` with a restart
//! policy: `examples/worker` aborts on `{"action":"abort"}`. Each crash
//! counts as an attempt; after 3 the job is in `work.dead` with the
//! crash as its reason, every other job of the queue is processed, and
//! the service is running (3 restarts are within its budget of 5).

use muster::queue::{QueueCommand, QueueReply};
use muster_test::eventually;
use muster_test::host::Host;
use serde_json::json;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_set_aside_after_its_attempts_and_the_service_keeps_running() {
    let manifest = format!(
        "[context]\nname = \"poison\"\n\n[[service]]\nname = \"worker\"\nrun = [\"{MUSTER}\", \"__service\", \"worker\", \"--log-level\", \"warn\"]\nrestart = \"permanent\"\n"
    );
    let host = Host::up(MUSTER, "poison", &manifest).await;
    host.wait_state("worker", 0, "running").await;
    let client = host.client().await;
    for i in 0..20 {
        client
            .enqueue("work", &json!({ "action": "ok", "i": i }))
            .await
            .unwrap();
    }
    client
        .enqueue("work", &json!({ "action": "abort" }))
        .await
        .unwrap();
    for i in 20..40 {
        client
            .enqueue("work", &json!({ "action": "ok", "i": i }))
            .await
            .unwrap();
    }
    let stats = eventually(
        std::time::Duration::from_secs(90),
        "the queue drained, the poison job dead",
        || async {
            let r = client
                .transport()
                .queue_command("work", QueueCommand::Stats)
                .await
                .ok()?;
            match r {
                QueueReply::Stats(s) if s.ready == 0 && s.in_flight == Some(0) && s.dead == 1 => {
                    Some(s)
                }
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(stats.dead, 1, "only the poison job is dead: {stats:?}");
    let QueueReply::Jobs(dead) = client
        .transport()
        .queue_command("work.dead", QueueCommand::Peek { count: 10 })
        .await
        .unwrap()
    else {
        panic!("no jobs reply")
    };
    let reason = dead[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("consumer died: killed by signal 6 (SIGABRT)")
            && reason.contains("gave up after 3 attempts"),
        "{reason}"
    );
    assert_eq!(dead[0].attempt, 4, "three deliveries, each a crash");
    // The service runs on; it was restarted once per crash.
    host.wait_state("worker", 0, "running").await;
    let restarts = host.slot("worker", 0).2;
    assert_eq!(restarts, 3, "one restart per crash");
}
