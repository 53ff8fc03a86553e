//! Reading manifest files: TOML into the raw form, then checked into the
//! model, with `${...}` substitutions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::check::Checker;
use crate::raw::RawFile;
use crate::{
    ContextSpec, DEFAULT_HTTP, DEFAULT_QUEUE_MAX_BYTES, HostSpec, Manifest, ManifestError,
};

/// Values substituted in `command`, `args`, `env` and `cwd`.
#[derive(Debug, Clone, Default)]
pub struct Substitutions {
    /// `${MUSTER_EXE}`: the running `muster` executable.
    pub muster_exe: Option<PathBuf>,
}

impl Manifest {
    /// Reads and checks the manifest files; each holds one context, the
    /// first may hold the `[host]` table.
    ///
    /// # Errors
    /// The first file that cannot be read or is not valid, with the line
    /// and key at fault.
    pub fn load(files: &[PathBuf], subst: &Substitutions) -> Result<Self, ManifestError> {
        let mut host = None;
        let mut contexts: Vec<Arc<ContextSpec>> = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let src = std::fs::read_to_string(file).map_err(|source| ManifestError::Io {
                file: file.clone(),
                source,
            })?;
            let (h, ctx) = parse_with(file, &src, i == 0, subst, true)?;
            if let Some(h) = h {
                host = Some(h);
            }
            if let Some(other) = contexts.iter().find(|c| c.name == ctx.name) {
                return Err(ManifestError::Invalid {
                    file: file.clone(),
                    line: 1,
                    key: "context.name".into(),
                    message: format!(
                        "context {:?} is also defined in {}",
                        ctx.name,
                        other.file.display()
                    ),
                });
            }
            contexts.push(Arc::new(ctx));
        }
        let first_dir = files
            .first()
            .map_or_else(|| PathBuf::from("."), |f| dir_of(f));
        Ok(Self {
            files: files.to_vec(),
            host: host.unwrap_or_else(|| HostSpec {
                name: None,
                bus: muster_zmq::DEFAULT_BUS.to_owned(),
                own_bus: true,
                bind: "127.0.0.1".to_owned(),
                advertise: None,
                rpc_ports: None,
                curve: None,
                plain_tcp: false,
                state_dir: first_dir.join(".muster"),
                http: Some(DEFAULT_HTTP.to_owned()),
                monitor_every: Duration::from_secs(1),
                gateway_open: false,
                queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
                queue_in_memory: false,
                queue_fsync: muster_zmq::FsyncPolicy::default(),
                heartbeats_per_sec: muster_zmq::DEFAULT_HEARTBEATS_PER_SEC,
                http_hosts: Vec::new(),
                http_public_read: false,
                log_max_bytes: Some(crate::model::DEFAULT_LOG_MAX_BYTES),
                log_keep: crate::model::DEFAULT_LOG_KEEP,
            }),
            contexts,
        })
    }

    /// The context named `name`.
    pub fn context(&self, name: &str) -> Option<&Arc<ContextSpec>> {
        self.contexts.iter().find(|c| c.name == name)
    }
}

/// Parses one manifest's text (the file name is for messages and for
/// relative paths). Unlike [`Manifest::load`], it does not look at the
/// file system: programs and working directories need not exist yet (the
/// scaffold checks manifests of services it has not built).
///
/// # Errors
/// As [`Manifest::load`].
pub fn parse(
    file: &Path,
    src: &str,
    first: bool,
    subst: &Substitutions,
) -> Result<(Option<HostSpec>, ContextSpec), ManifestError> {
    parse_with(file, src, first, subst, false)
}

/// [`parse`], also checking (with `on_disk`) that each service's working
/// directory and program exist.
fn parse_with(
    file: &Path,
    src: &str,
    first: bool,
    subst: &Substitutions,
    on_disk: bool,
) -> Result<(Option<HostSpec>, ContextSpec), ManifestError> {
    let raw: RawFile = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ManifestError::Invalid {
            file: file.to_owned(),
            line: line_of(src, span.start),
            key: key_path(src, span.start),
            message: e.message().trim().to_owned(),
        }
    })?;
    Checker {
        file,
        src,
        dir: dir_of(file),
        subst,
        on_disk,
    }
    .check(raw, first)
}

pub(crate) fn dir_of(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

pub(crate) fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset.min(src.len()))
        .map_or(1, |s| s.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// A dotted path for the key at `offset`: the enclosing table header (with
/// an index for arrays of tables) and the key on that line.
pub(crate) fn key_path(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = src[line_start..].lines().next().unwrap_or("").trim();
    let mut table = String::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in before[..line_start].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim();
            let n = counts.entry(name).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
    }
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
    }
    let key = line.split('=').next().unwrap_or("").trim();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Finds `command` the way a child process would: a path (relative to
/// `cwd`) or a name on `PATH`. The host checks it before spawning, so a
/// missing program is a clear "failed start" rather than an exit code.
///
/// # Errors
/// `NotFound`, saying what was looked for.
pub fn resolve_program(command: &str, cwd: &Path) -> std::io::Result<PathBuf> {
    let not_found = |what: String| std::io::Error::new(std::io::ErrorKind::NotFound, what);
    if command.contains('/') {
        let p = cwd.join(command);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(not_found(format!("program {} not found", p.display())))
        };
    }
    std::env::var_os("PATH")
        .unwrap_or_default()
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(command))
        .find(|p| p.is_file())
        .ok_or_else(|| not_found(format!("program {command:?} not found on PATH")))
}
