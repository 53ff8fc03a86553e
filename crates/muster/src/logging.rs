//! Logging set-up: level filter, stderr or a rotating file, text or JSON
//! lines. Handler spans carry `request_id` and `transaction`, so every line
//! a handler logs names its request.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
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
    /// `info`, `debug`, ... or full `EnvFilter` directives.
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
    let filter = EnvFilter::try_new(o.level).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("bad --log-level {:?}: {e}", o.level),
        )
    })?;
    let (writer, guard) = match o.file {
        Some(path) => {
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
            let rotation = match o.rotate {
                Rotate::Hourly => Rotation::HOURLY,
                Rotate::Daily => Rotation::DAILY,
                Rotate::Never => Rotation::NEVER,
            };
            let appender = RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix(name)
                .max_log_files(o.keep.max(1))
                .build(dir)
                .map_err(|e| Error::new(ErrorKind::Config, format!("cannot open log file: {e}")))?;
            let (nb, guard) = tracing_appender::non_blocking(appender);
            (BoxMakeWriter::new(nb), Some(guard))
        }
        None => (BoxMakeWriter::new(std::io::stderr), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(o.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = if o.json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (several groups in one test process) keeps the first.
    drop(installed);
    Ok(guard)
}
