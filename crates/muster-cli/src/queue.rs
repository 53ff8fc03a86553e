//! `muster queue`: operator commands on work queues, on any bus.

use anyhow::Context;
use muster::queue::{QueueCommand, QueueReply};
use serde_json::Value;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct QueueCmd {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    bus: BusArg,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Jobs waiting, held by consumers and dead, and consumers attached.
    Stats {
        /// The queue.
        queue: String,
        /// One JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the first jobs (one JSON line each) without taking them.
    Peek {
        /// The queue (`NAME.dead` for its dead letters).
        queue: String,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
    },
    /// Delete every waiting job.
    Purge {
        /// The queue (`NAME.dead` for its dead letters).
        queue: String,
    },
    /// Move every job of QUEUE.dead back to QUEUE, as a first attempt.
    RequeueDead {
        /// The queue.
        queue: String,
    },
    /// Add one job (JSON; a bare word is sent as a string).
    Push {
        /// The queue.
        queue: String,
        /// The job.
        job: String,
    },
}

impl QueueCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let client = self.bus.client().await?;
        let transport = client.transport().clone();
        let run = |queue: &str, command| {
            let transport = transport.clone();
            let queue = queue.to_owned();
            async move {
                transport
                    .queue_command(&queue, command)
                    .await
                    .with_context(|| format!("queue {queue}"))
            }
        };
        match self.action {
            Action::Stats { queue, json } => {
                let QueueReply::Stats(s) = run(&queue, QueueCommand::Stats).await? else {
                    anyhow::bail!("the bus answered stats with something else");
                };
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    let held = s
                        .in_flight
                        .map_or_else(|| "?".to_owned(), |n| n.to_string());
                    println!(
                        "{}: {} ready, {held} in flight, {} dead, {} consumers",
                        s.queue, s.ready, s.dead, s.consumers
                    );
                }
            }
            Action::Peek { queue, count } => {
                let QueueReply::Jobs(jobs) = run(&queue, QueueCommand::Peek { count }).await?
                else {
                    anyhow::bail!("the bus answered peek with something else");
                };
                for job in jobs {
                    let body: Value = serde_json::from_slice(&job.body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&job.body).into_owned())
                    });
                    let line = serde_json::json!({
                        "id": job.id,
                        "attempt": job.attempt,
                        "transaction": job.transaction,
                        "reason": job.reason,
                        "job": body,
                    });
                    println!("{line}");
                }
            }
            Action::Purge { queue } => {
                if let QueueReply::Count(n) = run(&queue, QueueCommand::Purge).await? {
                    println!("{n} jobs deleted from {queue}");
                }
            }
            Action::RequeueDead { queue } => {
                if let QueueReply::Count(n) = run(&queue, QueueCommand::RequeueDead).await? {
                    println!("{n} jobs moved from {queue}.dead back to {queue}");
                }
            }
            Action::Push { queue, job } => {
                let value: Value =
                    serde_json::from_str(&job).unwrap_or_else(|_| Value::String(job.clone()));
                let id = client
                    .enqueue(&queue, &value)
                    .await
                    .with_context(|| format!("cannot enqueue on {queue}"))?;
                println!("{id}");
            }
        }
        client.transport().close().await;
        Ok(())
    }
}
