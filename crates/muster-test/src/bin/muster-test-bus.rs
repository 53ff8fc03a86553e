//! The embedded bus alone in a process of its own, for tests that kill it
//! (SIGKILL) and start it again: `muster-test-bus URL JOBLOG [FSYNC]`
//! keeps the jobs of its queues in the job log `JOBLOG` (`memory` for
//! none), flushed under `FSYNC` (`always`, or an interval such as `5ms`).
//! It is an open bus (no credentials), as the in-process test buses are.
//! It prints `ready` once it serves (`muster_test::spawn_test_bus` waits
//! for that line).

use muster_zmq::{Bus, BusOptions, QueueStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, log, rest @ ..] = args.as_slice() else {
        eprintln!("usage: muster-test-bus URL JOBLOG|memory [FSYNC]");
        return std::process::ExitCode::from(2);
    };
    let mut options = BusOptions::default();
    if log != "memory" {
        let fsync = match rest.first().map(|f| f.parse()) {
            None => muster_zmq::FsyncPolicy::default(),
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                eprintln!("muster-test-bus: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        options.queue_store = QueueStore::Disk {
            path: log.into(),
            fsync,
        };
    }
    let addr = match url.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("muster-test-bus: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let bus = match Bus::start(addr, options).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("muster-test-bus: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("ready");
    let _ = tokio::signal::ctrl_c().await;
    bus.stop().await;
    std::process::ExitCode::SUCCESS
}
