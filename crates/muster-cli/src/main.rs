//! `muster`: run the embedded bus, call methods, publish and watch events,
//! list services and their statistics, run the demo and the benchmarks.

mod bench;
mod bus;
mod call;
mod credential;
mod ctl;
mod demo;
mod events;
mod keys;
mod ls;
mod queue;
mod scaffold;
mod schedule;
mod state;
mod top;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// muster's allocator (mimalloc): a call allocates a few dozen small
/// buffers, cheaper to take and give back there (docs/benchmarks.md).
#[global_allocator]
static ALLOC: muster::Allocator = muster::Allocator;

#[derive(Debug, Parser)]
#[command(
    name = "muster",
    version,
    about = "Message-driven microservices on an embedded ZeroMQ bus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to find the bus; every client command takes it.
#[derive(Debug, Clone, clap::Args)]
struct BusArg {
    /// Bus URL [default: $MUSTER_BUS, else zmq://127.0.0.1:7700].
    #[arg(long, global = true, value_name = "URL")]
    bus: Option<String>,
    /// Direct mode: an addresses file instead of a bus.
    #[arg(short = 'a', long, global = true, value_name = "FILE")]
    addresses: Option<std::path::PathBuf>,
}

impl BusArg {
    async fn client(&self) -> Result<muster::Client, muster::Error> {
        let t = muster::bus::connect(&self.url(), self.addresses.as_deref()).await?;
        Ok(muster::Client::new(t))
    }

    fn url(&self) -> String {
        self.bus
            .clone()
            .or_else(|| std::env::var("MUSTER_BUS").ok())
            .unwrap_or_else(|| muster::bus::DEFAULT_BUS.to_owned())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host: the bus, a control endpoint and the contexts of a manifest.
    Up(up::UpCmd),
    /// Control a running host: status, start, stop, restart, exit, reload, logs.
    Ctl(ctl::CtlCmd),
    /// A live view of a running host: instances with CPU, memory, restarts, request rate.
    Top(top::TopCmd),
    /// Run the embedded bus alone: registry and event forwarder.
    Bus(bus::BusCmd),
    /// Call SERVICE.METHOD with JSON params; print the result (exit 0) or the error (exit 1).
    Call(call::CallCmd),
    /// Publish one event.
    Pub(events::PubCmd),
    /// Print one JSON line per event matching the patterns.
    Sub(events::SubCmd),
    /// List registered services: version, instances, methods, events and queues, one line each.
    Ls(ls::LsCmd),
    /// One service in detail: instances, methods with their JSON Schemas,
    /// subscriptions and queues.
    Info(ls::InfoCmd),
    /// Print a credential of the bus (`user:NAME <secret>`) for a program
    /// run by hand: give it as MUSTER_CREDENTIAL (docs/security.md).
    Credential(credential::CredentialCmd),
    /// CURVE keys for a fleet on the embedded bus: init, client, show (docs/fleet.md).
    Keys(keys::KeysCmd),
    /// Per-method statistics of every instance (or of one service).
    Stats(ls::StatsCmd),
    /// Create a service project, or a context of services from a services.toml.
    New(scaffold::NewCmd),
    /// Translate a context_task_queue XML context (or, with --meta, generate its services).
    Import(scaffold::ImportCmd),
    /// Work queues: stats, peek, purge, requeue-dead, push.
    Queue(queue::QueueCmd),
    /// Read a replicated state from its owner.
    State(state::StateCmd),
    /// Check a schedule: its next fire times.
    Schedule(schedule::ScheduleCmd),
    /// Run the demo context (StateMachineSample and echo) under a host.
    Demo(demo::DemoCmd),
    /// Measure RPC and pub/sub against raw ZeroMQ and TCP baselines.
    Bench(bench::BenchCmd),
    /// Run one of the example services (used by `demo`).
    #[command(name = "__service", hide = true)]
    Service {
        /// echo, producer, subscriber or worker.
        name: String,
        /// The standard service arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Become PROGRAM, dying with the host (used by the host to spawn services).
    #[command(name = "__exec", hide = true)]
    Exec {
        /// PID of the host, then the program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Kill the listed process groups when the host is gone (used by the host).
    #[command(name = "__guard", hide = true)]
    Guard,
    /// A benchmark peer process (used by `bench`).
    #[command(name = "__bench-peer", hide = true)]
    BenchPeer(bench::PeerCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Service { name, args } => demo::run_example(&name, args),
        Command::Exec { args } => muster_host::process::exec_child(args),
        Command::Guard => muster_host::process::guard_main(),
        Command::BenchPeer(p) => bench::run_peer(p),
        other => {
            let runtime = match muster::cli::build_runtime(muster::cli::workers_from_env()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("muster: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = runtime.block_on(dispatch(other));
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            code
        }
    }
}

async fn dispatch(command: Command) -> ExitCode {
    let result = match command {
        Command::Up(c) => c.run().await,
        Command::Ctl(c) => c.run().await,
        Command::Top(c) => c.run().await,
        Command::Bus(c) => c.run().await,
        Command::Call(c) => return c.run().await,
        Command::Pub(c) => c.run().await,
        Command::Sub(c) => c.run().await,
        Command::Ls(c) => c.run().await,
        Command::Info(c) => c.run().await,
        Command::Credential(c) => c.run(),
        Command::Keys(c) => c.run(),
        Command::Stats(c) => c.run().await,
        Command::Demo(c) => c.run().await,
        Command::Schedule(c) => c.run(),
        Command::State(c) => c.run().await,
        Command::Queue(c) => c.run().await,
        Command::New(c) => c.run(),
        Command::Import(c) => c.run(),
        Command::Bench(c) => c.run().await,
        Command::Service { .. } | Command::Exec { .. } | Command::Guard | Command::BenchPeer(_) => {
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster: {e:#}");
            exit_code(&e)
        }
    }
}

/// Exit code 2 for configuration errors (a manifest that is not valid,
/// like a service's config), 1 for every other failure: the same codes
/// as every muster service (`docs/manifest.md`, "Exit codes").
fn exit_code(e: &anyhow::Error) -> ExitCode {
    let config = e.chain().any(|c| {
        c.downcast_ref::<muster_host::manifest::ManifestError>()
            .is_some()
            || matches!(
                c.downcast_ref::<muster_host::HostError>(),
                Some(muster_host::HostError::Manifest(_))
            )
    });
    if config {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Quiet logging for client commands: warnings and errors on stderr.
fn init_client_logging() {
    init_logging(&std::env::var("MUSTER_LOG_LEVEL").unwrap_or_else(|_| "warn".into()));
}

/// Logging on stderr at `level`.
fn init_logging(level: &str) {
    let _ = muster::logging::init(&muster::logging::LogOptions {
        level,
        file: None,
        rotate: muster::logging::Rotate::Never,
        keep: 1,
        json: false,
    });
}
