//! Checking the raw manifest into the model: every value in range, every
//! service named exists, no dependency cycle, programs and directories on
//! disk when asked; each fault with its line and key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster::schedule::{Misfire, Schedule};
use muster_core::registry::is_valid_name;

use crate::load::line_of;
use crate::raw::{RawActions, RawFile, RawService};
use toml::Spanned;

use crate::{
    Actions, Backoff, ContextSpec, DEFAULT_HTTP, DEFAULT_LOG_KEEP, DEFAULT_LOG_MAX_BYTES,
    DEFAULT_QUEUE_MAX_BYTES, HostSpec, ManifestError, RestartPolicy, Scheduled, ServiceSpec,
    Substitutions, Triggers,
};

pub(crate) struct Checker<'a> {
    pub(crate) file: &'a Path,
    pub(crate) src: &'a str,
    pub(crate) dir: PathBuf,
    pub(crate) subst: &'a Substitutions,
    /// Check that working directories and programs exist.
    pub(crate) on_disk: bool,
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

    pub(crate) fn check(
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
                        check_bus(b.get_ref())
                            .map_err(|e| self.err(b.span().start, "host.bus", e))?;
                        b.into_inner()
                    }
                    None => muster_zmq::DEFAULT_BUS.to_owned(),
                };
                let name = match h.name {
                    Some(n) if !is_valid_name(n.get_ref()) => {
                        return Err(self.err(
                            n.span().start,
                            "host.name",
                            format!(
                                "{:?} is not a host name: letters, digits, _ and -, starting with a letter",
                                n.get_ref()
                            ),
                        ));
                    }
                    n => n.map(Spanned::into_inner),
                };
                let rpc_ports = match &h.rpc_ports {
                    Some(r) => Some(r.get_ref().parse().map_err(|e: muster_core::Error| {
                        self.err(r.span().start, "host.rpc_ports", e)
                    })?),
                    None => None,
                };
                Some(HostSpec {
                    name,
                    bus,
                    own_bus: h.own_bus.unwrap_or(true),
                    bind: h.bind.unwrap_or_else(|| "127.0.0.1".to_owned()),
                    advertise: h.advertise.filter(|a| !a.trim().is_empty()),
                    rpc_ports,
                    curve: h.curve.as_deref().map(|c| self.dir.join(self.expand(c))),
                    plain_tcp: h.plain_tcp.unwrap_or(false),
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
                    queue_in_memory: match &h.queue_store {
                        None => false,
                        Some(v) => match v.get_ref().as_str() {
                            "disk" => false,
                            "memory" => true,
                            other => {
                                return Err(self.err(
                                    v.span().start,
                                    "host.queue_store",
                                    format!("{other:?} is neither \"disk\" nor \"memory\""),
                                ));
                            }
                        },
                    },
                    queue_fsync: match &h.queue_fsync {
                        None => muster_zmq::FsyncPolicy::default(),
                        Some(v) => v
                            .get_ref()
                            .parse()
                            .map_err(|e| self.err(v.span().start, "host.queue_fsync", e))?,
                    },
                    heartbeats_per_sec: match &h.heartbeats_per_sec {
                        Some(n) if *n.get_ref() == 0 => {
                            return Err(self.err(
                                n.span().start,
                                "host.heartbeats_per_sec",
                                "must be at least 1",
                            ));
                        }
                        Some(n) => *n.get_ref(),
                        None => muster_zmq::DEFAULT_HEARTBEATS_PER_SEC,
                    },
                    http_hosts: h.http_hosts,
                    http_public_read: h.http_public_read.unwrap_or(false),
                    log_max_bytes: match &h.log_max_size {
                        Some(v) => match parse_size(v.get_ref())
                            .map_err(|e| self.err(v.span().start, "host.log_max_size", e))?
                        {
                            0 => None,
                            n => Some(n),
                        },
                        None => Some(DEFAULT_LOG_MAX_BYTES),
                    },
                    log_keep: h.log_keep.unwrap_or(DEFAULT_LOG_KEEP),
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
            .then(|| crate::load::resolve_program(&command, &cwd).err())
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
        let limits = crate::Limits {
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

/// A size that could not be read.
#[derive(Debug, thiserror::Error)]
enum SizeError {
    #[error("{0:?} is not a size (e.g. 512MB)")]
    NotANumber(String),
    #[error("{text:?}: unknown unit {unit:?} (B, KB, MB, GB)")]
    UnknownUnit { text: String, unit: String },
}

/// `512MB`, `2GB`, `800KB` or plain bytes.
fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| SizeError::NotANumber(s.to_owned()))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(SizeError::UnknownUnit {
                text: s.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    // Saturates: a size past u64 is "no limit" in practice.
    Ok((n * mult) as u64)
}

/// A host's bus: its own embedded bus (`zmq://HOST:PORT`), or a broker it
/// joins (`amqp://`, `amqps://`, `redis://`, `rediss://`, `nats://`, `tls://`).
fn check_bus(url: &str) -> Result<(), muster_core::Error> {
    match url.split("://").next().unwrap_or("") {
        "zmq" | "tcp" => url.parse::<muster_zmq::BusAddr>().map(|_| ()),
        "amqp" | "amqps" | "redis" | "rediss" | "nats" | "tls" if url.contains("://") => Ok(()),
        _ => Err(muster_core::Error::new(
            muster_core::ErrorKind::Config,
            format!(
                "unknown bus URL {url:?}: expected zmq://HOST:PORT (the host's own bus) or a broker: amqp://, redis://, nats://"
            ),
        )),
    }
}
