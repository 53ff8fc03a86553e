//! Logging set-up: level filter, stderr or a rotating file, text or JSON
//! lines. Handler spans carry `request_id` and `transaction`, so every line
//! a handler logs names its request.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::{Error, ErrorKind};

/// How often a log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Rotate {
    /// A new file every hour.
    Hourly,
    /// A new file every day.
    #[default]
    Daily,
    /// One file, never rotated.
    Never,
}

/// Logging options from the standard CLI.
#[derive(Debug, Clone)]
pub struct LogOptions<'a> {
    /// `info`, `debug`, ... or `target=level,...` directives.
    pub level: &'a str,
    /// Log to this file (rotated) instead of stderr.
    pub file: Option<&'a Path>,
    /// Rotation period.
    pub rotate: Rotate,
    /// Rotated files kept.
    pub keep: usize,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Installs the global subscriber. Keep the guard until exit so buffered
/// lines reach the file.
///
/// # Errors
/// A bad level, or a log directory that cannot be created.
pub fn init(o: &LogOptions<'_>) -> Result<Option<WorkerGuard>, Error> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // The AMQP client logs what the transport reports itself (a broken
    // connection, a returned request) at error and warn; keep it quiet
    // unless asked for by name (`--log-level info,lapin=debug`).
    let level = if o.level.contains("lapin") {
        o.level.to_owned()
    } else {
        format!("{},lapin=off", o.level)
    };
    let filter: Targets = level.parse().map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!(
                "bad --log-level {:?}: {e} (use error, warn, info, debug, trace or target=level,...)",
                o.level
            ),
        )
    })?;
    let (writer, guard) = match o.file {
        Some(path) => {
            let (w, g) = rolling_file(path, o.rotate, o.keep)?;
            (w, Some(g))
        }
        None => (BoxMakeWriter::new(std::io::stderr), None),
    };
    let ansi = o.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if o.json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init()
    };
    // A second init (several groups in one test process) keeps the first.
    drop(installed);
    Ok(guard)
}

fn rolling_file(
    path: &Path,
    rotate: Rotate,
    keep: usize,
) -> Result<(BoxMakeWriter, WorkerGuard), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot create log directory {}: {e}", dir.display()),
        )
    })?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("muster.log");
    let rotation = match rotate {
        Rotate::Hourly => Rotation::HOURLY,
        Rotate::Daily => Rotation::DAILY,
        Rotate::Never => Rotation::NEVER,
    };
    let appender = RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(name)
        .max_log_files(keep.max(1))
        .build(dir)
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot open log file: {e}")))?;
    let (nb, guard) = tracing_appender::non_blocking(appender);
    Ok((BoxMakeWriter::new(nb), guard))
}
