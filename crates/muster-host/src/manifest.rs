//! The manifest (`muster.toml`): what the host runs. Every key, its
//! default and an example are in `docs/manifest.md`; this module parses a
//! file into checked [`ContextSpec`]s and says, for anything wrong, the
//! file, the line and the key at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster::schedule::{Misfire, Schedule};
use muster_core::registry::is_valid_name;
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

/// A manifest that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {}", file.display())]
    Io {
        /// The manifest file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("{}:{line}: {key}: {message}", file.display())]
    Invalid {
        /// The manifest file.
        file: PathBuf,
        /// 1-based line of the fault.
        line: usize,
        /// The key at fault, as a dotted path (`service[1].restart`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the HTTP endpoint listens unless `[host] http` says otherwise.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7780";

/// The host's own settings: the `[host]` table (first manifest only).
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// Bus URL the embedded bus binds (`zmq://127.0.0.1:7700`).
    pub bus: String,
    /// Interface the control endpoint binds (`127.0.0.1`).
    pub control_bind: String,
    /// Where the token, the transaction record and the logs live.
    pub state_dir: PathBuf,
    /// Where the HTTP endpoint listens (`None`: off).
    pub http: Option<String>,
    /// How often instances are sampled.
    pub monitor_every: Duration,
    /// `POST /call/...` without the token.
    pub gateway_open: bool,
    /// Bytes of jobs the embedded bus's work queues hold in all
    /// (`queue_max_bytes`, default 256 MiB); more are refused.
    pub queue_max_bytes: u64,
    /// `Host` header names the HTTP endpoint answers besides the loopback
    /// ones (`http_hosts`).
    pub http_hosts: Vec<String>,
    /// Status, top, events and metrics over HTTP without the token
    /// (`http_public_read`).
    pub http_public_read: bool,
}

/// Bytes of jobs the embedded bus holds unless `[host] queue_max_bytes`
/// says otherwise.
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 256 << 20;

/// How a context reacts when one of its instances dies (OTP strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the instance that died.
    #[default]
    OneForOne,
    /// Restart every service of the transaction.
    OneForAll,
    /// Restart the service that died and those declared after it.
    RestForOne,
}

/// When an instance that ended is started again (OTP meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Always.
    #[default]
    Permanent,
    /// Only when it failed (non-zero exit, signal, missed heartbeats).
    Transient,
    /// Never.
    Temporary,
}

/// When a spawned instance counts as started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// When it registers on the bus (muster services).
    #[default]
    Registered,
    /// As soon as the process is running (programs that never register).
    Spawned,
}

/// What a trigger does. Deserializes from the manifest's inline table
/// (`{ start = ["walk"] }`) for files that describe triggers without spans
/// (`muster new --from services.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    /// Services to start (a dead one is brought up again).
    #[serde(default)]
    pub start: Vec<String>,
    /// Services to stop.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Services to restart.
    #[serde(default)]
    pub restart: Vec<String>,
    /// End the whole transaction.
    #[serde(default)]
    pub exit: bool,
}

impl Actions {
    /// True when the trigger does nothing.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.restart.is_empty() && !self.exit
    }

    /// Every service it names.
    pub fn targets(&self) -> impl Iterator<Item = &String> {
        self.start.iter().chain(&self.stop).chain(&self.restart)
    }
}

/// The four triggers of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triggers {
    /// After an instance registered.
    pub on_start: Actions,
    /// After an instance called `ctx.update`.
    pub on_update: Actions,
    /// After an instance failed.
    pub on_fail: Actions,
    /// After an instance exited with code 0 on its own.
    pub on_exit: Actions,
}

impl Triggers {
    /// `(manifest key, actions)` of each trigger, in lifecycle order.
    pub fn all(&self) -> [(&'static str, &Actions); 4] {
        [
            ("on_start", &self.on_start),
            ("on_update", &self.on_update),
            ("on_fail", &self.on_fail),
            ("on_exit", &self.on_exit),
        ]
    }

    /// The trigger whose manifest key is `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Actions> {
        match name {
            "on_start" => Some(&mut self.on_start),
            "on_update" => Some(&mut self.on_update),
            "on_fail" => Some(&mut self.on_fail),
            "on_exit" => Some(&mut self.on_exit),
            _ => None,
        }
    }
}

/// Restart delays: `backoff`, doubled per failure in a row up to
/// `backoff_max`, with up to 20% jitter; back to `backoff` after an
/// instance ran `backoff_reset` without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run this long resets the delay.
    pub reset_after: Duration,
}

/// One `[[service]]` of a context.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// Service name (also its name on the bus).
    pub name: String,
    /// Program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the manifest's directory).
    pub cwd: PathBuf,
    /// Processes to run.
    pub instances: u32,
    /// When an ended instance is started again.
    pub restart: RestartPolicy,
    /// Services that must be ready before this one starts.
    pub after: Vec<String>,
    /// Started with its context (else only by a trigger or `ctl`).
    pub autostart: bool,
    /// SIGTERM, then SIGKILL after this long.
    pub stop_timeout: Duration,
    /// When a spawned instance counts as started.
    pub ready: Readiness,
    /// A start that is not ready within this long has failed.
    pub ready_timeout: Duration,
    /// Restart delays.
    pub backoff: Backoff,
    /// Triggers.
    pub triggers: Triggers,
    /// Started on a schedule, run to completion (never restarted).
    pub schedule: Option<Scheduled>,
    /// Resource limits, checked at each monitor sample.
    pub limits: crate::monitor::Limits,
}

/// A service the host starts on a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// `every 30s`, `at 19:42` or a cron expression.
    pub expr: String,
    /// Zone for cron and `at` times.
    pub tz: String,
    /// Fire times missed while a run was going or the host was down.
    pub misfire: Misfire,
}

impl Scheduled {
    /// The schedule (checked when the manifest was read; a spec built by
    /// hand with a bad expression never fires).
    pub fn schedule(&self) -> Schedule {
        Schedule::parse(&self.expr)
            .and_then(|s| s.in_zone(&self.tz))
            .unwrap_or_else(|e| {
                tracing::error!(expr = %self.expr, error = %e, "bad schedule: it never fires");
                Schedule::cron("0 0 0 30 2 *")
                    .unwrap_or_else(|_| unreachable!("a valid expression"))
            })
    }
}

/// One context: a set of services started together under a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSpec {
    /// Context name.
    pub name: String,
    /// The manifest it came from.
    pub file: PathBuf,
    /// Restart strategy.
    pub strategy: Strategy,
    /// More restarts than this within `within` fail the transaction.
    pub max_restarts: u32,
    /// The restart budget's window.
    pub within: Duration,
    /// Start one transaction when the host starts.
    pub boot: bool,
    /// Services, in manifest order.
    pub services: Vec<Arc<ServiceSpec>>,
}

impl ContextSpec {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceSpec>> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Everything the host runs: its settings and its contexts.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest files, in the order given.
    pub files: Vec<PathBuf>,
    /// The host's settings.
    pub host: HostSpec,
    /// The contexts, one per file.
    pub contexts: Vec<Arc<ContextSpec>>,
}

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
                bus: muster_zmq::DEFAULT_BUS.to_owned(),
                control_bind: "127.0.0.1".to_owned(),
                state_dir: first_dir.join(".muster"),
                http: Some(DEFAULT_HTTP.to_owned()),
                monitor_every: Duration::from_secs(1),
                gateway_open: false,
                queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
                http_hosts: Vec::new(),
                http_public_read: false,
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

fn dir_of(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    host: Option<Spanned<RawHost>>,
    context: RawContext,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    bus: Option<Spanned<String>>,
    control_bind: Option<String>,
    state_dir: Option<String>,
    http: Option<Spanned<String>>,
    monitor_every: Option<Spanned<DurationValue>>,
    gateway_open: Option<bool>,
    queue_max_bytes: Option<Spanned<String>>,
    #[serde(default)]
    http_hosts: Vec<String>,
    http_public_read: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    name: Spanned<String>,
    #[serde(default)]
    strategy: Strategy,
    max_restarts: Option<u32>,
    within_secs: Option<Spanned<u64>>,
    boot: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    run: Option<Spanned<Vec<String>>>,
    command: Option<Spanned<String>>,
    args: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<Spanned<String>>,
    instances: Option<Spanned<u32>>,
    restart: Option<Spanned<RestartPolicy>>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    schedule_tz: Option<Spanned<String>>,
    misfire: Option<Spanned<String>>,
    max_rss: Option<Spanned<String>>,
    max_cpu: Option<Spanned<f64>>,
    cpu_window: Option<DurationValue>,
    autostart: Option<bool>,
    stop_timeout: Option<DurationValue>,
    #[serde(default)]
    ready: Readiness,
    ready_timeout: Option<DurationValue>,
    backoff: Option<DurationValue>,
    backoff_max: Option<DurationValue>,
    backoff_reset: Option<DurationValue>,
    on_start: Option<RawActions>,
    on_update: Option<RawActions>,
    on_fail: Option<RawActions>,
    on_exit: Option<RawActions>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawActions {
    #[serde(default)]
    start: Vec<Spanned<String>>,
    #[serde(default)]
    stop: Vec<Spanned<String>>,
    #[serde(default)]
    restart: Vec<Spanned<String>>,
    #[serde(default)]
    exit: bool,
}

/// A duration written as seconds (`5`, `0.5`) or with a unit (`"250ms"`).
#[derive(Debug, Clone, Copy)]
struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let parsed = match Written::deserialize(d)? {
            Written::Int(n) => Ok(Duration::from_secs(n)),
            Written::Float(f) if f.is_finite() && f >= 0.0 => Ok(Duration::from_secs_f64(f)),
            Written::Float(f) => Err(format!("{f} is not a duration")),
            Written::Text(s) => muster_core::duration::parse(&s),
        };
        parsed.map(Self).map_err(serde::de::Error::custom)
    }
}

// ---- checking ------------------------------------------------------------

struct Checker<'a> {
    file: &'a Path,
    src: &'a str,
    dir: PathBuf,
    subst: &'a Substitutions,
    /// Check that working directories and programs exist.
    on_disk: bool,
}

impl Checker<'_> {
    fn err(
        &self,
        offset: usize,
        key: impl fmt::Display,
        message: impl fmt::Display,
    ) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_owned(),
            line: line_of(self.src, offset),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    fn expand(&self, s: &str) -> String {
        let mut out = s.replace("${MANIFEST_DIR}", &self.dir.to_string_lossy());
        if let Some(exe) = &self.subst.muster_exe {
            out = out.replace("${MUSTER_EXE}", &exe.to_string_lossy());
        }
        out
    }

    fn check(
        &self,
        raw: RawFile,
        first: bool,
    ) -> Result<(Option<HostSpec>, ContextSpec), ManifestError> {
        let host = match raw.host {
            None => None,
            Some(h) if !first => {
                return Err(self.err(
                    h.span().start,
                    "host",
                    "the [host] table belongs in the first manifest given to `muster up`",
                ));
            }
            Some(h) => {
                let h = h.into_inner();
                let http = match h.http {
                    None => Some(DEFAULT_HTTP.to_owned()),
                    Some(a) if a.get_ref() == "off" => None,
                    Some(a) => {
                        a.get_ref().parse::<std::net::SocketAddr>().map_err(|e| {
                            self.err(
                                a.span().start,
                                "host.http",
                                format!("{:?}: {e} (IP:PORT, or \"off\")", a.get_ref()),
                            )
                        })?;
                        Some(a.into_inner())
                    }
                };
                let monitor_every = match h.monitor_every {
                    Some(d) if d.get_ref().0 < Duration::from_millis(100) => {
                        return Err(self.err(
                            d.span().start,
                            "host.monitor_every",
                            "at least 100ms",
                        ));
                    }
                    Some(d) => d.get_ref().0,
                    None => Duration::from_secs(1),
                };
                let bus = match h.bus {
                    Some(b) => {
                        b.get_ref()
                            .parse::<muster_zmq::BusAddr>()
                            .map_err(|e| self.err(b.span().start, "host.bus", e))?;
                        b.into_inner()
                    }
                    None => muster_zmq::DEFAULT_BUS.to_owned(),
                };
                Some(HostSpec {
                    bus,
                    control_bind: h.control_bind.unwrap_or_else(|| "127.0.0.1".to_owned()),
                    state_dir: self
                        .dir
                        .join(self.expand(h.state_dir.as_deref().unwrap_or(".muster"))),
                    http,
                    monitor_every,
                    gateway_open: h.gateway_open.unwrap_or(false),
                    queue_max_bytes: match &h.queue_max_bytes {
                        Some(v) => parse_size(v.get_ref())
                            .map_err(|e| self.err(v.span().start, "host.queue_max_bytes", e))?,
                        None => DEFAULT_QUEUE_MAX_BYTES,
                    },
                    http_hosts: h.http_hosts,
                    http_public_read: h.http_public_read.unwrap_or(false),
                })
            }
        };

        let c = raw.context;
        if !is_valid_name(c.name.get_ref()) {
            return Err(self.err(
                c.name.span().start,
                "context.name",
                format!(
                    "{:?} is not a valid name (letters, digits, `_`, `-`, starting with a letter)",
                    c.name.get_ref()
                ),
            ));
        }
        let within = match &c.within_secs {
            Some(w) if *w.get_ref() == 0 => {
                return Err(self.err(w.span().start, "context.within_secs", "must be at least 1"));
            }
            Some(w) => Duration::from_secs(*w.get_ref()),
            None => Duration::from_secs(30),
        };

        let names: Vec<&str> = raw
            .service
            .iter()
            .map(|s| s.name.get_ref().as_str())
            .collect();
        let mut services = Vec::with_capacity(raw.service.len());
        for (i, s) in raw.service.iter().enumerate() {
            services.push(Arc::new(self.service(i, s, &names)?));
        }
        self.check_cycles(&raw.service)?;

        Ok((
            host,
            ContextSpec {
                name: c.name.into_inner(),
                file: std::path::absolute(self.file).unwrap_or_else(|_| self.file.to_owned()),
                strategy: c.strategy,
                max_restarts: c.max_restarts.unwrap_or(5),
                within,
                boot: c.boot.unwrap_or(true),
                services,
            },
        ))
    }

    fn service(
        &self,
        i: usize,
        s: &RawService,
        names: &[&str],
    ) -> Result<ServiceSpec, ManifestError> {
        let key = |k: &str| format!("service[{i}].{k}");
        let name = s.name.get_ref();
        if !is_valid_name(name) {
            return Err(self.err(
                s.name.span().start,
                key("name"),
                format!("{name:?} is not a valid name (letters, digits, `_`, `-`, starting with a letter)"),
            ));
        }
        if names[..i].contains(&name.as_str()) {
            return Err(self.err(
                s.name.span().start,
                key("name"),
                format!("service {name:?} is defined twice"),
            ));
        }
        let (command, args) = match (&s.run, &s.command) {
            (Some(_), Some(c)) => {
                return Err(self.err(
                    c.span().start,
                    key("command"),
                    "give either `run` or `command` (with `args`), not both",
                ));
            }
            (Some(run), None) => {
                let Some((cmd, rest)) = run.get_ref().split_first() else {
                    return Err(self.err(run.span().start, key("run"), "must name a program"));
                };
                if s.args.is_some() {
                    return Err(self.err(
                        run.span().start,
                        key("args"),
                        "`args` goes with `command`; with `run` put the arguments in the list",
                    ));
                }
                (cmd.clone(), rest.to_vec())
            }
            (None, Some(c)) => (c.get_ref().clone(), s.args.clone().unwrap_or_default()),
            (None, None) => {
                return Err(self.err(
                    s.name.span().start,
                    format!("service[{i}]"),
                    format!("service {name:?} needs `run = [\"program\", ...]` or `command`"),
                ));
            }
        };
        let cwd = s.cwd.as_ref().map_or_else(
            || self.dir.clone(),
            |c| self.dir.join(self.expand(c.get_ref())),
        );
        // Checked now, not at the first spawn: a typo fails the load with
        // its line instead of a crash loop later.
        if self.on_disk && !cwd.is_dir() {
            let at = s
                .cwd
                .as_ref()
                .map_or(s.name.span().start, |c| c.span().start);
            return Err(self.err(
                at,
                key("cwd"),
                format!("{} is not a directory", cwd.display()),
            ));
        }
        let instances = match &s.instances {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1000 => {
                return Err(self.err(n.span().start, key("instances"), "must be 1 to 1000"));
            }
            Some(n) => *n.get_ref(),
            None => 1,
        };
        for a in &s.after {
            self.known(a, &key("after"), names, name)?;
        }
        let triggers = Triggers {
            on_start: self.actions(s.on_start.as_ref(), &key("on_start"), names)?,
            on_update: self.actions(s.on_update.as_ref(), &key("on_update"), names)?,
            on_fail: self.actions(s.on_fail.as_ref(), &key("on_fail"), names)?,
            on_exit: self.actions(s.on_exit.as_ref(), &key("on_exit"), names)?,
        };
        let command = self.expand(&command);
        let command = if command.contains('/') && Path::new(&command).is_relative() {
            self.dir.join(&command).to_string_lossy().into_owned()
        } else {
            command
        };
        if let Some(e) = self
            .on_disk
            .then(|| crate::process::resolve(&command, &cwd).err())
            .flatten()
        {
            let (at, k) = match (&s.run, &s.command) {
                (Some(r), _) => (r.span().start, "run"),
                (None, Some(c)) => (c.span().start, "command"),
                (None, None) => (s.name.span().start, "run"),
            };
            return Err(self.err(at, key(k), e));
        }
        let schedule = self.scheduled(i, s, instances)?;
        let limits = crate::monitor::Limits {
            max_rss: match &s.max_rss {
                Some(v) => Some(
                    parse_size(v.get_ref())
                        .map_err(|e| self.err(v.span().start, key("max_rss"), e))?,
                ),
                None => None,
            },
            max_cpu: match &s.max_cpu {
                Some(v) if !(v.get_ref().is_finite() && *v.get_ref() > 0.0) => {
                    return Err(self.err(
                        v.span().start,
                        key("max_cpu"),
                        "a percentage of one core above 0 (e.g. 90, or 150 for 1.5 cores)",
                    ));
                }
                Some(v) => Some(*v.get_ref()),
                None => None,
            },
            cpu_window: s.cpu_window.map_or(Duration::from_secs(30), |d| d.0),
        };
        let backoff = Backoff {
            initial: s.backoff.map_or(Duration::from_millis(100), |d| d.0),
            max: s.backoff_max.map_or(Duration::from_secs(30), |d| d.0),
            reset_after: s.backoff_reset.map_or(Duration::from_secs(10), |d| d.0),
        };
        Ok(ServiceSpec {
            name: name.clone(),
            command,
            args: args.iter().map(|a| self.expand(a)).collect(),
            env: s
                .env
                .iter()
                .map(|(k, v)| (k.clone(), self.expand(v)))
                .collect(),
            cwd,
            instances,
            restart: s.restart.as_ref().map_or_else(
                || {
                    if schedule.is_some() {
                        RestartPolicy::Temporary
                    } else {
                        RestartPolicy::Permanent
                    }
                },
                |r| *r.get_ref(),
            ),
            after: s.after.iter().map(|a| a.get_ref().clone()).collect(),
            autostart: s.autostart.unwrap_or(true) && schedule.is_none(),
            stop_timeout: s.stop_timeout.map_or(Duration::from_secs(5), |d| d.0),
            ready: s.ready,
            ready_timeout: s.ready_timeout.map_or(Duration::from_secs(10), |d| d.0),
            backoff,
            triggers,
            schedule,
            limits,
        })
    }

    /// `schedule`, `schedule_tz` and `misfire`, checked.
    fn scheduled(
        &self,
        i: usize,
        s: &RawService,
        instances: u32,
    ) -> Result<Option<Scheduled>, ManifestError> {
        let key = |k: &str| format!("service[{i}].{k}");
        let Some(expr) = &s.schedule else {
            for (k, v) in [("schedule_tz", &s.schedule_tz), ("misfire", &s.misfire)] {
                if let Some(v) = v {
                    return Err(self.err(
                        v.span().start,
                        key(k),
                        "only for a service with `schedule`",
                    ));
                }
            }
            return Ok(None);
        };
        let tz = s
            .schedule_tz
            .as_ref()
            .map_or_else(|| "UTC".to_owned(), |t| t.get_ref().clone());
        Schedule::parse(expr.get_ref())
            .map_err(|e| self.err(expr.span().start, key("schedule"), e))?
            .in_zone(&tz)
            .map_err(|e| {
                let at = s
                    .schedule_tz
                    .as_ref()
                    .map_or(expr.span().start, |t| t.span().start);
                self.err(at, key("schedule_tz"), e)
            })?;
        let misfire = match &s.misfire {
            Some(m) => m
                .get_ref()
                .parse::<Misfire>()
                .map_err(|e| self.err(m.span().start, key("misfire"), e))?,
            None => Misfire::default(),
        };
        if instances != 1 {
            let at = s
                .instances
                .as_ref()
                .map_or(expr.span().start, |n| n.span().start);
            return Err(self.err(
                at,
                key("instances"),
                "a scheduled service runs one process per fire time",
            ));
        }
        if let Some(r) = &s.restart {
            return Err(self.err(
                r.span().start,
                key("restart"),
                "a scheduled service runs to completion; the schedule starts it, not a restart policy",
            ));
        }
        Ok(Some(Scheduled {
            expr: expr.get_ref().trim().to_owned(),
            tz,
            misfire,
        }))
    }

    fn known(
        &self,
        target: &Spanned<String>,
        key: &str,
        names: &[&str],
        this: &str,
    ) -> Result<(), ManifestError> {
        let t = target.get_ref();
        if t == this && key.ends_with(".after") {
            return Err(self.err(
                target.span().start,
                key,
                format!("{t:?} cannot start after itself"),
            ));
        }
        if !names.contains(&t.as_str()) {
            return Err(self.err(
                target.span().start,
                key,
                format!(
                    "no service {t:?} in this context (services: {})",
                    names.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn actions(
        &self,
        raw: Option<&RawActions>,
        key: &str,
        names: &[&str],
    ) -> Result<Actions, ManifestError> {
        let Some(raw) = raw else {
            return Ok(Actions::default());
        };
        let list = |targets: &[Spanned<String>], verb: &str| {
            targets
                .iter()
                .map(|t| {
                    self.known(t, &format!("{key}.{verb}"), names, "")?;
                    Ok(t.get_ref().clone())
                })
                .collect::<Result<Vec<_>, ManifestError>>()
        };
        Ok(Actions {
            start: list(&raw.start, "start")?,
            stop: list(&raw.stop, "stop")?,
            restart: list(&raw.restart, "restart")?,
            exit: raw.exit,
        })
    }

    /// `after` must not loop: a service would wait for itself forever.
    fn check_cycles(&self, services: &[RawService]) -> Result<(), ManifestError> {
        let deps: BTreeMap<&str, Vec<&str>> = services
            .iter()
            .map(|s| {
                (
                    s.name.get_ref().as_str(),
                    s.after.iter().map(|a| a.get_ref().as_str()).collect(),
                )
            })
            .collect();
        for (i, s) in services.iter().enumerate() {
            let start = s.name.get_ref().as_str();
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&str> = deps[start].clone();
            while let Some(n) = stack.pop() {
                if n == start {
                    return Err(self.err(
                        s.after
                            .first()
                            .map_or(s.name.span().start, |a| a.span().start),
                        format!("service[{i}].after"),
                        format!("{start:?} depends on itself through `after`"),
                    ));
                }
                if seen.insert(n) {
                    stack.extend(deps.get(n).into_iter().flatten());
                }
            }
        }
        Ok(())
    }
}

/// `512MB`, `2GB`, `800KB` or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MB)"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KB, MB, GB)")),
    };
    Ok((n * mult) as u64)
}

fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset.min(src.len()))
        .map_or(1, |s| s.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// A dotted path for the key at `offset`: the enclosing table header (with
/// an index for arrays of tables) and the key on that line.
fn key_path(src: &str, offset: usize) -> String {
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

/// The context of a manifest given as text, as if read from
/// `/tmp/m/muster.toml` (tests).
#[cfg(test)]
pub(crate) fn parse_text(src: &str) -> Result<ContextSpec, ManifestError> {
    parse(
        Path::new("/tmp/m/muster.toml"),
        src,
        true,
        &Substitutions::default(),
    )
    .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(src: &str) -> Result<ContextSpec, ManifestError> {
        parse_text(src)
    }

    fn fault(src: &str) -> (usize, String, String) {
        match load(src).unwrap_err() {
            ManifestError::Invalid {
                line, key, message, ..
            } => (line, key, message),
            ManifestError::Io { .. } => unreachable!(),
        }
    }

    const GOOD: &str = r#"
[context]
name = "morning"
strategy = "rest_for_one"
max_restarts = 3
within_secs = 10

[[service]]
name = "db"
run = ["bin/db", "--port", "1"]

[[service]]
name = "stand"
command = "stand"
args = ["--speed", "2"]
instances = 2
restart = "transient"
after = ["db"]
stop_timeout = "250ms"
on_update = { start = ["db"] }
on_exit = { exit = true }
"#;

    #[test]
    fn missing_programs_and_directories_fail_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("muster.toml");
        let load = |src: &str| {
            std::fs::write(&file, src).unwrap();
            Manifest::load(std::slice::from_ref(&file), &Substitutions::default())
        };
        let ok = "[context]\nname = \"c\"\n[[service]]\nname = \"a\"\nrun = [\"sh\", \"-c\", \"true\"]\n";
        load(ok).unwrap();
        let fault = |src: &str| match load(src).unwrap_err() {
            ManifestError::Invalid {
                line, key, message, ..
            } => (line, key, message),
            ManifestError::Io { .. } => unreachable!(),
        };
        let (line, key, msg) = fault(&format!("{ok}cwd = \"/nonexistent\"\n"));
        assert_eq!((line, key.as_str()), (6, "service[0].cwd"));
        assert!(msg.contains("/nonexistent is not a directory"), "{msg}");
        let (line, key, msg) = fault(&ok.replace("\"sh\"", "\"no-such-program-xyz\""));
        assert_eq!((line, key.as_str()), (5, "service[0].run"));
        assert!(msg.contains("not found on PATH"), "{msg}");
        let (_, key, msg) = fault(&ok.replace("\"sh\"", "\"bin/missing\""));
        assert_eq!(key, "service[0].run");
        assert!(msg.contains("bin/missing not found"), "{msg}");
        // A file that is not there is said once.
        let e =
            Manifest::load(&[dir.path().join("nope.toml")], &Substitutions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read {}", dir.path().join("nope.toml").display())
        );
    }

    #[test]
    fn reads_every_key() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.name, "morning");
        assert_eq!(c.strategy, Strategy::RestForOne);
        assert_eq!((c.max_restarts, c.within), (3, Duration::from_secs(10)));
        let db = &c.services[0];
        assert_eq!(
            db.command, "/tmp/m/bin/db",
            "relative paths are the manifest's"
        );
        assert_eq!(db.args, ["--port", "1"]);
        assert_eq!(db.restart, RestartPolicy::Permanent);
        let stand = &c.services[1];
        assert_eq!(stand.command, "stand", "bare names are looked up in PATH");
        assert_eq!(stand.instances, 2);
        assert_eq!(stand.after, ["db"]);
        assert_eq!(stand.stop_timeout, Duration::from_millis(250));
        assert_eq!(stand.triggers.on_update.start, ["db"]);
        assert!(stand.triggers.on_exit.exit);
        assert!(stand.triggers.on_fail.is_empty());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let src = GOOD.replace("instances = 2", "instanses = 2");
        let (line, key, msg) = fault(&src);
        assert_eq!(line, 16);
        assert_eq!(key, "service[1].instanses");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn wrong_type_and_bad_value() {
        let (line, key, msg) =
            fault(&GOOD.replace("restart = \"transient\"", "restart = \"always\""));
        assert_eq!((line, key.as_str()), (17, "service[1].restart"));
        assert!(msg.contains("permanent"), "{msg}");
        let (line, key, _) = fault(&GOOD.replace("\"250ms\"", "\"5 years\""));
        assert_eq!((line, key.as_str()), (19, "service[1].stop_timeout"));
        let (line, key, _) = fault(&GOOD.replace("instances = 2", "instances = 0"));
        assert_eq!((line, key.as_str()), (16, "service[1].instances"));
    }

    #[test]
    fn unknown_services_and_cycles_are_refused() {
        let (line, key, msg) = fault(&GOOD.replace("after = [\"db\"]", "after = [\"dbx\"]"));
        assert_eq!((line, key.as_str()), (18, "service[1].after"));
        assert!(msg.contains("no service \"dbx\""), "{msg}");
        let (_, key, _) = fault(&GOOD.replace("start = [\"db\"]", "start = [\"nope\"]"));
        assert_eq!(key, "service[1].on_update.start");
        let looped = GOOD.replace(
            "run = [\"bin/db\", \"--port\", \"1\"]",
            "run = [\"db\"]\nafter = [\"stand\"]",
        );
        let (_, key, msg) = fault(&looped);
        assert!(
            key.ends_with(".after") && msg.contains("itself"),
            "{key}: {msg}"
        );
        let (_, _, msg) = fault(&GOOD.replace("name = \"stand\"", "name = \"db\""));
        assert!(msg.contains("twice"), "{msg}");
    }

    #[test]
    fn schedules_are_checked() {
        let src = GOOD.replace(
            "run = [\"bin/db\", \"--port\", \"1\"]",
            "run = [\"bin/db\"]\nschedule = \"0 0,12 * * *\"\nschedule_tz = \"Europe/Berlin\"\nmisfire = \"catch_up:3\"",
        );
        let c = load(&src).unwrap();
        let s = c.services[0].schedule.clone().unwrap();
        assert_eq!(
            (s.expr.as_str(), s.tz.as_str(), s.misfire),
            ("0 0,12 * * *", "Europe/Berlin", Misfire::CatchUp(3))
        );
        assert_eq!(c.services[0].restart, RestartPolicy::Temporary);
        assert!(!c.services[0].autostart);
        let (line, key, msg) = fault(&src.replace("0 0,12 * * *", "0 0,25 * * *"));
        assert_eq!((line, key.as_str()), (11, "service[0].schedule"));
        assert!(msg.contains("not a cron expression"), "{msg}");
        let (_, key, _) = fault(&src.replace("Europe/Berlin", "Europe/Nowhere"));
        assert_eq!(key, "service[0].schedule_tz");
        let (_, key, _) = fault(&src.replace("catch_up:3", "later"));
        assert_eq!(key, "service[0].misfire");
        let (_, key, msg) =
            fault(&src.replace("name = \"db\"", "name = \"db\"\nrestart = \"permanent\""));
        assert!(
            key.ends_with("restart") && msg.contains("runs to completion"),
            "{key}: {msg}"
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let (line, _, _) = fault("[context]\nname = \"x\"\n[[service]\n");
        assert_eq!(line, 3);
        let (_, key, msg) = fault("[[service]]\nname = \"a\"\nrun = [\"a\"]\n");
        assert!(msg.contains("context"), "{key}: {msg}");
    }
}
