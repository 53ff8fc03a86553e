//! The standard service command line, shared by every service binary.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::config::{Sources, read_file};
use crate::dotenv::Env;
use crate::logging::{self, LogOptions, Rotate};
use crate::runtime::{ServiceHandle, StartOptions};
use crate::service::Service;
use crate::{Error, ErrorKind};

/// Flags every service accepts. Any other `--key value` (or `--key=value`)
/// is merged into the service's config; values are parsed as JSON scalars.
#[derive(Debug, Clone, Parser)]
#[command(disable_version_flag = true)]
pub struct ServiceArgs {
    /// Config file: JSON, TOML or YAML by extension.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Direct mode: addresses file mapping services to endpoints (no bus).
    #[arg(short = 'a', long, value_name = "FILE")]
    pub addresses: Option<PathBuf>,
    /// Bus URL [default: $MUSTER_BUS, else zmq://127.0.0.1:7700].
    #[arg(long, value_name = "URL")]
    pub bus: Option<String>,
    /// Main mode: run the service's main function, exit when it returns.
    #[arg(short = 'm', long)]
    pub main: bool,
    /// Log level or filter directives [default: $MUSTER_LOG_LEVEL, else info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log to this file instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Rotation of the log file.
    #[arg(long, value_enum, default_value_t = Rotate::Daily)]
    pub log_rotate: Rotate,
    /// Rotated log files to keep.
    #[arg(long, value_name = "N", default_value_t = 7)]
    pub log_keep: usize,
    /// Log JSON lines.
    #[arg(long)]
    pub json_logs: bool,
    /// Runtime worker threads [default: $MUSTER_WORKER_THREADS, else 1].
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Largest message in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::wire::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,
}

/// The tokio runtime a muster process runs on: `workers` threads, one by
/// default. Several processes share a machine's cores, and one worker per
/// process avoids waking threads across cores for every message: on two
/// cores it took pipelined RPC from 163k to 251k calls/s and pub/sub from
/// 729k to 878k events/s (`docs/benchmarks.md`). Raise it for CPU-bound
/// handlers (`--worker-threads`, `MUSTER_WORKER_THREADS`).
///
/// # Errors
/// When the operating system refuses threads or an event loop.
pub fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.unwrap_or(1).max(1))
        .enable_all()
        .build()
}

/// Workers from `MUSTER_WORKER_THREADS`, for programs without the
/// standard command line.
pub fn workers_from_env() -> Option<usize> {
    std::env::var("MUSTER_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
}

/// Splits the command line into the standard flags and `--key value`
/// config pairs.
pub fn split_args(args: Vec<String>) -> (Vec<String>, Vec<(String, String)>) {
    let cmd = ServiceArgs::command();
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .chain(["help".to_owned()])
        .collect();
    let mut standard = Vec::new();
    let mut extras = Vec::new();
    let mut it = args.into_iter().peekable();
    if let Some(program) = it.next() {
        standard.push(program);
    }
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            standard.push(arg);
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.to_owned(), None),
        };
        if name.is_empty() || known.contains(&name) {
            standard.push(arg);
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => match it.peek() {
                Some(next) if !next.starts_with("--") => it.next().unwrap_or_default(),
                _ => "true".to_owned(),
            },
        };
        extras.push((name, value));
    }
    (standard, extras)
}

/// Runs services from the process command line until a signal (or until
/// `main` returns in main mode).
pub(crate) fn run(services: Vec<Service>, argv: Vec<String>) -> crate::Result<()> {
    let (standard, extras) = split_args(argv);
    let args = match ServiceArgs::try_parse_from(standard) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let env = Env::load();
    let name = services
        .iter()
        .map(Service::name)
        .collect::<Vec<_>>()
        .join("+");

    let mut sources = Sources {
        file: None,
        env: Vec::new(),
        args: extras,
    }
    .from_env(env.iter());
    if let Some(path) = &args.config {
        match read_file(path) {
            Ok(v) => sources.file = Some(v),
            Err(e) => config_exit(&name, &e),
        }
    }
    // Validate every service's config before anything starts.
    for s in &services {
        if let Some(load) = &s.config {
            let section = sources.for_service(s.name(), services.len() > 1);
            if let Err(e) = load(&section) {
                config_exit(s.name(), &e);
            }
        }
    }

    let level = args
        .log_level
        .clone()
        .or_else(|| env.get("MUSTER_LOG_LEVEL").map(str::to_owned))
        .unwrap_or_else(|| "info".to_owned());
    let _guard = logging::init(&LogOptions {
        level: &level,
        file: args.log_file.as_deref(),
        rotate: args.log_rotate,
        keep: args.log_keep,
        json: args.json_logs,
    })?;

    let bus = args
        .bus
        .clone()
        .or_else(|| env.get("MUSTER_BUS").map(str::to_owned))
        .unwrap_or_else(|| crate::bus::DEFAULT_BUS.to_owned());
    let workers = args.worker_threads.or_else(|| {
        env.get("MUSTER_WORKER_THREADS")
            .and_then(|n| n.parse().ok())
    });
    // Spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; made
    // before the runtime (its HTTP client runs one of its own), flushed
    // when the guard drops at the end.
    #[cfg(feature = "otlp")]
    let _otlp = crate::otlp::install(&name);
    let runtime = build_runtime(workers).map_err(Error::from)?;
    let result = runtime.block_on(serve(services, args, bus, sources, env));
    // Do not wait on tasks stuck in handlers beyond the grace already given.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn config_exit(name: &str, e: &dyn std::fmt::Display) -> ! {
    eprintln!("{name}: {e}");
    std::process::exit(2);
}

async fn serve(
    services: Vec<Service>,
    args: ServiceArgs,
    bus: String,
    sources: Sources,
    env: Env,
) -> crate::Result<()> {
    let mut options = crate::bus::BusOptions::from_environment()?;
    options.max_message_size = args.max_message_size;
    let transport = crate::bus::connect_with(&bus, args.addresses.as_deref(), &options).await?;
    // Listened for before anything starts: a SIGTERM while the services
    // start (a consumer may already run jobs) stops them gracefully once
    // they have started, instead of killing the process.
    let mut stop_signals = StopSignals::install()?;
    let group = services.len() > 1;
    let mut handles: Vec<ServiceHandle> = Vec::new();
    for s in services {
        let opts = StartOptions {
            config: Some(sources.for_service(s.name(), group)),
            instance: env.get("MUSTER_INSTANCE").map(|i| {
                if group {
                    format!("{i}-{}", s.name())
                } else {
                    i.to_owned()
                }
            }),
            transaction: env.get("MUSTER_TRANSACTION").map(str::to_owned),
            run_main: args.main && (s.main.is_some() || !group),
        };
        match s.start_with(transport.clone(), opts).await {
            Ok(h) => handles.push(h),
            Err(e) => {
                for h in handles {
                    h.stop().await;
                }
                transport.close().await;
                return Err(e);
            }
        }
    }

    let outcome = wait_for_end(&mut handles, &mut stop_signals).await;
    for h in handles {
        h.stop().await;
    }
    transport.close().await;
    outcome
}

/// SIGINT and SIGTERM, caught from the moment they are installed: one
/// that arrives earlier than its `recv` waits for it.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> crate::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).map_err(Error::from)?,
            term: signal(SignalKind::terminate()).map_err(Error::from)?,
        })
    }
}

/// Waits for SIGINT/SIGTERM, or for the first `main` to return.
async fn wait_for_end(
    handles: &mut [ServiceHandle],
    signals: &mut StopSignals,
) -> crate::Result<()> {
    let any_main = handles.iter().any(ServiceHandle::has_main);
    let mains = async {
        if !any_main {
            return std::future::pending().await;
        }
        let all = handles
            .iter_mut()
            .filter(|h| h.has_main())
            .map(|h| Box::pin(h.main_finished()));
        futures_util::future::select_all(all).await.0
    };
    tokio::select! {
        _ = signals.int.recv() => {
            tracing::info!("SIGINT: stopping");
            Ok(())
        }
        _ = signals.term.recv() => {
            tracing::info!("SIGTERM: stopping");
            Ok(())
        }
        r = mains => match r {
            Ok(()) => {
                tracing::info!("main finished");
                Ok(())
            }
            Err(e) => Err(Error::new(ErrorKind::Config, format!("main failed: {e}"))),
        },
    }
}
