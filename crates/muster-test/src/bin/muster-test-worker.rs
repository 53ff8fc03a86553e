//! A work-queue consumer for muster's chaos tests. It takes `{"n": N}`
//! jobs from the queue `chaos` (or `--queue Q`), appends `N` to the file
//! `--record FILE` before acknowledging (so a job recorded twice was
//! delivered twice), and fails permanently every job with `N % 1000 == 7`,
//! which must end in `chaos.dead`. `--delay-ms` makes each job take that
//! long (so a run lasts long enough to be interrupted); `--max-attempts`
//! sets the deliveries of a job (default 5), crashes of its consumers
//! included; `--abort-on N` aborts the process on job `N` (a poison job).

use std::io::Write;
use std::sync::{Arc, Mutex};

use muster::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Work {
    n: u32,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

const USAGE: &str = "usage: muster-test-worker --record FILE [--queue Q] [--prefetch N] [--delay-ms MS] [--max-attempts N] [--abort-on N] [service options: --bus URL, --log-level L, ...]";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let Some(record) = arg(&args, "--record") else {
        eprintln!("muster-test-worker: --record FILE is required\n{USAGE}");
        return std::process::ExitCode::from(2);
    };
    match run(&args, &record) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster-test-worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[String], record: &str) -> muster::Result<()> {
    let queue = arg(args, "--queue").unwrap_or_else(|| "chaos".into());
    let prefetch: usize = arg(args, "--prefetch")
        .and_then(|p| p.parse().ok())
        .unwrap_or(20);
    let abort_on: Option<u32> = arg(args, "--abort-on").and_then(|p| p.parse().ok());
    let max_attempts: u32 = arg(args, "--max-attempts")
        .and_then(|p| p.parse().ok())
        .unwrap_or(5);
    let delay = std::time::Duration::from_millis(
        arg(args, "--delay-ms")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
    );
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record)
        .map_err(|e| muster::Error::new(muster::ErrorKind::Io, format!("{record}: {e}")))?;
    let file = Arc::new(Mutex::new(file));
    // The service CLI sees only the standard options.
    let passthrough: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let flag = |f: &str| a.as_str() == f;
            let value_of = |f: &str| *i > 0 && args[i - 1] == f;
            const OWN: [&str; 6] = [
                "--queue",
                "--record",
                "--prefetch",
                "--delay-ms",
                "--max-attempts",
                "--abort-on",
            ];
            !OWN.iter().any(|f| flag(f) || value_of(f))
        })
        .map(|(_, a)| a.clone())
        .collect();
    Service::new("chaosworker")
        .consume(&queue, move |Args(w): Args<Work>| {
            let file = file.clone();
            async move {
                tokio::time::sleep(delay).await;
                if abort_on == Some(w.n) {
                    std::process::abort();
                }
                if w.n % 1000 == 7 {
                    return Err(RpcError::permanent(format!(
                        "job {} is designed to fail",
                        w.n
                    )));
                }
                // One write per line: a kill cannot leave half a line.
                let line = format!("{}\n", w.n);
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                f.write_all(line.as_bytes()).map_err(RpcError::internal)?;
                Ok(())
            }
        })
        .prefetch(prefetch)
        .max_attempts(max_attempts)
        .claim_after(std::time::Duration::from_secs(2))
        .run_from(passthrough)
}
