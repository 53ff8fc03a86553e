//! The host on a broker: `[host] bus = "amqp://..."` (or `redis://`,
//! `nats://`) and services that register there, with no
//! `ready = "spawned"`: the host sees each registration (ready), restarts
//! a killed instance and sees the replacement register, answers `muster
//! ctl` over the broker, and a poison job under it is set aside after its
//! attempts while the service keeps running. Each broker's URL comes from
//! `MUSTER_TEST_AMQP`, `MUSTER_TEST_REDIS`, `MUSTER_TEST_NATS`; without it
//! the test says SKIPPED.

use std::time::Duration;

use muster::Client;
use muster::queue::{QueueCommand, QueueReply};
use muster_test::host::{Host, is, next, tempdir};
use muster_test::{broker_url, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

/// The broker's URL with a namespace of this test's own.
fn namespaced(var: &str, test: &str) -> Option<String> {
    let base = broker_url(var, test)?;
    let ns = format!("h{:x}", muster::id::random_u64() & 0xff_ffff);
    let key = if base.starts_with("amqp") {
        "exchange"
    } else {
        "prefix"
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}{key}={ns}"))
}

async fn host_on(bus: &str, test: &str, services: &str) -> Host {
    let dir = tempdir(test);
    let manifest =
        format!("[host]\nbus = \"{bus}\"\nhttp = \"off\"\n\n[context]\nname = \"ctx\"\n{services}");
    std::fs::write(dir.join("muster.toml"), manifest).unwrap();
    Host::start(MUSTER, dir, bus.to_owned()).await
}

async fn supervised_on(var: &str, test: &str) {
    let Some(bus) = namespaced(var, test) else {
        return;
    };
    let echo = format!(
        "[[service]]\nname = \"echo\"\nrun = [\"{MUSTER}\", \"__service\", \"echo\", \"--log-level\", \"warn\"]\ninstances = 2\nbackoff = \"100ms\"\n"
    );
    let host = host_on(&bus, test, &echo).await;
    let mut events = host.events().await;
    // Ready means registered on the broker.
    let pid = host.wait_state("echo", 0, "running").await.unwrap();
    host.wait_state("echo", 1, "running").await;
    let client = Client::connect(&bus).await.unwrap();
    let r: Value = client
        .call("echo.shout", &json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(r["text"], "hi");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let failed = next(&mut events, "echo failed", is("echo", "failed")).await;
    assert_eq!(failed["signal"], 9);
    let started = next(&mut events, "echo started again", is("echo", "started")).await;
    assert_eq!(started["slot"], 0);
    assert_ne!(started["pid"], pid);
    let (_, state, restarts) = host.slot("echo", 0);
    assert_eq!((state.as_str(), restarts), ("running", 1));
    // The instance that died leaves the broker's registry; the two
    // running ones stay, and nobody expires them.
    eventually(
        Duration::from_secs(30),
        "two echo instances listed",
        || async {
            let n = client
                .instances()
                .await
                .ok()?
                .iter()
                .filter(|i| i.service == "echo")
                .count();
            (n == 2).then_some(())
        },
    )
    .await;
    // A check that nothing happens needs a window: two seconds is eight of
    // the host's lists, twice what a false expiry would take.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        host.slot("echo", 1).2,
        0,
        "the other instance was never restarted"
    );
    assert_eq!(host.slot("echo", 0).2, 1);
}

async fn poison_on(var: &str, test: &str) {
    let Some(bus) = namespaced(var, test) else {
        return;
    };
    let worker = format!(
        "[[service]]\nname = \"worker\"\nrun = [\"{MUSTER}\", \"__service\", \"worker\", \"--log-level\", \"warn\"]\nrestart = \"permanent\"\n# a dead consumer's job is taken over after 2 s on Redis and NATS\nenv = {{ WORKER_CLAIM_AFTER = \"2s\" }}\n"
    );
    let host = host_on(&bus, test, &worker).await;
    host.wait_state("worker", 0, "running").await;
    let client = Client::connect(&bus).await.unwrap();
    // RabbitMQ's queues are the vhost's, not the exchange's: left-overs
    // of an earlier run go first.
    for q in ["work", "work.dead"] {
        client
            .transport()
            .queue_command(q, QueueCommand::Purge)
            .await
            .unwrap();
    }
    for i in 0..10 {
        client
            .enqueue("work", &json!({"action": "ok", "i": i}))
            .await
            .unwrap();
    }
    client
        .enqueue("work", &json!({"action": "abort"}))
        .await
        .unwrap();
    for i in 10..20 {
        client
            .enqueue("work", &json!({"action": "ok", "i": i}))
            .await
            .unwrap();
    }
    let stats = eventually(
        Duration::from_secs(120),
        "the queue drained, the poison job dead",
        || async {
            match client
                .transport()
                .queue_command("work", QueueCommand::Stats)
                .await
                .ok()?
            {
                QueueReply::Stats(s) if s.ready == 0 && s.dead == 1 => Some(s),
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
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    host.wait_state("worker", 0, "running").await;
    assert_eq!(
        host.slot("worker", 0).2,
        3,
        "one restart per crash; the dead job: {:?}; the host said:\n{}",
        dead[0],
        host.log()
    );
}

macro_rules! on_each_broker {
    ($($name:ident => $var:literal, $body:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $body($var, stringify!($name)).await;
            }
        )*
    };
}

on_each_broker! {
    amqp_instances_are_supervised => "MUSTER_TEST_AMQP", supervised_on;
    redis_instances_are_supervised => "MUSTER_TEST_REDIS", supervised_on;
    nats_instances_are_supervised => "MUSTER_TEST_NATS", supervised_on;
    amqp_poison_job_under_the_host => "MUSTER_TEST_AMQP", poison_on;
    redis_poison_job_under_the_host => "MUSTER_TEST_REDIS", poison_on;
    nats_poison_job_under_the_host => "MUSTER_TEST_NATS", poison_on;
}
