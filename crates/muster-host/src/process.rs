//! Service processes: spawning with the instance's environment and log
//! file, signalling the process group, and the launcher (`muster-launch`
//! or `muster __exec`) that makes a child die with the host.
//!
//! Each instance runs in its own process group (so a stop reaches the
//! programs it started, and Ctrl-C in the host's terminal reaches only the
//! host, which then stops everything in order); when an instance ends, what
//! is left of its group is killed. Two things make even a `kill -9` of the
//! host leave nothing behind:
//! - the launcher asks the kernel to SIGKILL the child when the host dies
//!   (`PR_SET_PDEATHSIG`), then `exec`s the service ([`Launcher`]);
//! - one guard process (`muster __guard`) learns every process group over
//!   a pipe; when the pipe closes (the host is gone, however it died), it
//!   kills the groups still listed, grandchildren included.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use muster_core::auth::{KeyId, MasterSecret};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::supervisor::{ExitStatus, Spawn, StopSignal};

/// What every instance is started with: the bus, its master secret (each
/// instance gets a credential derived from it), where logs go.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The bus URL.
    pub url: &'a str,
    /// The bus's master secret.
    pub secret: &'a MasterSecret,
    /// Where instance logs go.
    pub log_dir: &'a Path,
    /// When they are rotated.
    pub log_rotation: crate::instance_log::LogRotation,
    /// The interface their RPC endpoints bind (`MUSTER_BIND_HOST`).
    pub bind_host: &'a str,
    /// The host callers reach them at (`MUSTER_ADVERTISE_HOST`).
    pub advertise_host: Option<&'a str>,
    /// The ports they bind (`MUSTER_RPC_PORTS`).
    pub rpc_ports: Option<muster_zmq::PortRange>,
    /// The fleet's CURVE keys directory (`MUSTER_CURVE`).
    pub curve: Option<&'a Path>,
    /// Plain TCP beyond loopback allowed (`MUSTER_PLAIN_TCP=1`).
    pub plain_tcp: bool,
}

/// The program a child starts as before it becomes the service: it asks
/// to die with the host and restores the open-file limit, in the child,
/// which `std` offers only through `unsafe` `pre_exec` (this workspace
/// forbids `unsafe`).
///
/// `muster-launch`, installed beside `muster`, is preferred: it links
/// only what it needs and costs about 0.9 ms of CPU per start, where
/// `muster __exec` costs about 2.5 ms, nearly all in the dynamic loader's
/// page faults on `muster`'s 85,000 relocations (`perf stat`,
/// docs/benchmarks.md, "The small launcher"). At 1,000 instances that is
/// about 1.6 s of CPU saved on a 2-core machine. Without it, `muster
/// __exec` does the same work.
///
/// ```
/// use std::path::Path;
/// use muster_host::process::Launcher;
///
/// // No `muster-launch` beside this `muster`: children start through
/// // `muster __exec`.
/// let launcher = Launcher::beside(Path::new("/nonexistent/bin/muster"));
/// assert_eq!(launcher.program(), Path::new("/nonexistent/bin/muster"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    program: PathBuf,
    /// `muster` itself: the launcher is its `__exec` subcommand.
    subcommand: bool,
}

impl Launcher {
    /// The name of the small launcher, looked for beside `muster`.
    pub const SMALL: &str = "muster-launch";

    /// `muster-launch` when it is beside `muster` (the executable that
    /// implements `__exec`), else `muster __exec`.
    pub fn beside(muster: &Path) -> Self {
        let small = muster.with_file_name(Self::SMALL);
        if small.is_file() {
            Self {
                program: small,
                subcommand: false,
            }
        } else {
            Self {
                program: muster.to_owned(),
                subcommand: true,
            }
        }
    }

    /// The program children start as.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The command that launches `program` for the host `host_pid`.
    fn command(&self, host_pid: u32, program: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        if self.subcommand {
            c.arg("__exec");
        }
        c.arg(host_pid.to_string()).arg(program);
        c
    }
}

/// Where an instance's stdout and stderr go.
pub fn log_path(log_dir: &Path, transaction: &str, service: &str, slot: u32) -> PathBuf {
    log_dir
        .join(transaction)
        .join(format!("{service}.{slot}.log"))
}

/// Starts the process of `spawn`; its stdout and stderr are appended to
/// its log file.
///
/// # Errors
/// The program cannot be found or started, or the log file cannot be
/// opened.
pub fn spawn(
    spawn: &Spawn,
    bus: &Launch<'_>,
    launcher: Option<&Launcher>,
) -> std::io::Result<tokio::process::Child> {
    crate::fdlimit::room_for_instance().map_err(std::io::Error::other)?;
    let spec = &spawn.spec;
    let program = muster_manifest::load::resolve_program(&spec.command, &spec.cwd)?;
    let path = log_path(bus.log_dir, &spawn.transaction, &spec.name, spawn.slot);
    if let Some(dir) = path.parent() {
        muster_core::fs::private_dir(bus.log_dir)?;
        muster_core::fs::private_dir(dir)?;
    }
    let log = crate::instance_log::InstanceLog::open(&path, bus.log_rotation)?;
    log.write(
        format!(
            "--- muster: starting {} as instance {} of transaction {}\n",
            spec.command, spawn.instance, spawn.transaction
        )
        .as_bytes(),
    );
    let mut cmd = match launcher {
        Some(launcher) => {
            let mut c = launcher.command(std::process::id(), &program);
            c.args(&spec.args);
            // The trampoline gives the program the host's original limit.
            if let Some(soft) = crate::fdlimit::started_with() {
                c.env(crate::fdlimit::STARTED_WITH_ENV, soft.to_string());
            }
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&program);
            c.args(&spec.args);
            c
        }
    };
    cmd.current_dir(&spec.cwd)
        .envs(&spec.env)
        .env("MUSTER_BUS", bus.url)
        // The instance's own credential: in its environment, which only
        // its user can read (never on the command line, which everyone can).
        .env(
            muster_core::auth::CREDENTIAL_ENV,
            bus.secret
                .credential(KeyId::Instance(spawn.instance.clone()))
                .to_env_value(),
        )
        .env(muster::bus::BIND_HOST_ENV, bus.bind_host)
        // systemd's socket is the host's to tell (`NotifyAccess=main`).
        .env_remove("NOTIFY_SOCKET")
        .env("MUSTER_SERVICE", &spec.name)
        .env("MUSTER_INSTANCE", &spawn.instance)
        .env("MUSTER_TRANSACTION", &spawn.transaction)
        .stdin(Stdio::null())
        // Through pipes to the host, which writes and rotates the file.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = bus.curve {
        cmd.env(muster_zmq::curve::CURVE_ENV, absolute(dir));
    }
    if bus.plain_tcp {
        cmd.env(muster_zmq::curve::PLAIN_TCP_ENV, "1");
    }
    if let Some(a) = bus.advertise_host {
        cmd.env(muster_zmq::listen::ADVERTISE_HOST_ENV, a);
    }
    if let Some(r) = bus.rpc_ports {
        cmd.env(muster_zmq::listen::RPC_PORTS_ENV, r.to_string());
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        log.drain(out);
    }
    if let Some(err) = child.stderr.take() {
        log.drain(err);
    }
    Ok(child)
}

/// `dir` from the root: an instance runs in a working directory of its own.
fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// How a child ended, from its wait status.
pub fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(s)) => ExitStatus::Signal(s),
        (None, None) => ExitStatus::Code(-1),
    }
}

/// Signals the process group of `pid`; a group already gone is not an error.
pub fn signal(pid: u32, signal: StopSignal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let sig = match signal {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Kill => Signal::SIGKILL,
    };
    if let Err(e) = killpg(Pid::from_raw(raw), sig)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pid, ?sig, error = %e, "cannot signal process group");
    }
}

/// `muster-launch HOST_PID PROGRAM ARGS...` (and `muster __exec`, the
/// same): arranges to be killed when the host dies, then becomes PROGRAM.
/// Returns only on failure.
pub fn exec_child(args: Vec<OsString>) -> ExitCode {
    const ME: &str = "muster launcher";
    let mut args = args.into_iter();
    let host: Option<i32> = args.next().and_then(|a| a.to_str()?.parse().ok());
    let Some(program) = args.next() else {
        eprintln!("{ME}: usage: muster-launch HOST_PID PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("{ME}: cannot ask to die with the host: {e}");
    }
    // The host may have died between fork and prctl: then nobody would
    // kill us, so do not start at all.
    if host.is_some_and(|h| nix::unistd::getppid().as_raw() != h) {
        eprintln!("{ME}: the host is gone; not starting");
        return ExitCode::from(1);
    }
    crate::fdlimit::restore_for_child(
        std::env::var_os(crate::fdlimit::STARTED_WITH_ENV).as_deref(),
    );
    let err = std::process::Command::new(&program)
        .args(args)
        .env_remove(crate::fdlimit::STARTED_WITH_ENV)
        .exec();
    eprintln!("{ME}: cannot run {}: {err}", Path::new(&program).display());
    ExitCode::from(127)
}

/// The host's side of the guard process.
#[derive(Debug)]
pub struct Guard {
    child: std::process::Child,
    pipe: std::process::ChildStdin,
}

impl Guard {
    /// Starts `launcher __guard` in its own process group (so Ctrl-C in the
    /// host's terminal does not reach it).
    ///
    /// # Errors
    /// The guard cannot be started.
    pub fn start(launcher: &Path) -> std::io::Result<Self> {
        let mut child = std::process::Command::new(launcher)
            .arg("__guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("guard has no stdin"))?;
        Ok(Self { child, pipe })
    }

    /// A new process group to kill if the host dies.
    pub fn add(&mut self, pgid: u32) {
        if let Err(e) = writeln!(self.pipe, "+{pgid}") {
            tracing::warn!(error = %e, "the guard process is gone");
        }
    }

    /// A process group that ended.
    pub fn remove(&mut self, pgid: u32) {
        let _ = writeln!(self.pipe, "-{pgid}");
    }

    /// Closes the pipe (every group has ended) and reaps the guard.
    pub fn close(self) {
        let Self { mut child, pipe } = self;
        drop(pipe);
        let _ = child.wait();
    }
}

/// `muster __guard`: reads `+PGID` / `-PGID` lines from stdin; at end of
/// input (the host exited or died) SIGKILLs every group still listed.
pub fn guard_main() -> ExitCode {
    let mut groups = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(Ok(p)) = line.strip_prefix('+').map(|p| p.trim().parse::<u32>()) {
            groups.insert(p);
        } else if let Some(Ok(p)) = line.strip_prefix('-').map(|p| p.trim().parse::<u32>()) {
            groups.remove(&p);
        }
    }
    for pgid in groups {
        signal(pgid, StopSignal::Kill);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &tokio::process::Command) -> Vec<String> {
        let c = c.as_std();
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_small_launcher_beside_muster_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        let muster = dir.path().join("muster");
        std::fs::write(&muster, "").unwrap();
        let small = dir.path().join(Launcher::SMALL);
        std::fs::write(&small, "").unwrap();

        let launcher = Launcher::beside(&muster);
        assert_eq!(launcher.program(), small);
        assert_eq!(
            args(&launcher.command(42, Path::new("/bin/echo"))),
            [small.to_str().unwrap(), "42", "/bin/echo"]
        );
    }

    #[test]
    fn without_the_small_launcher_muster_exec_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let muster = dir.path().join("muster");
        std::fs::write(&muster, "").unwrap();
        // A directory of that name is not a launcher.
        std::fs::create_dir(dir.path().join(Launcher::SMALL)).unwrap();

        let launcher = Launcher::beside(&muster);
        assert_eq!(launcher.program(), muster);
        assert_eq!(
            args(&launcher.command(42, Path::new("/bin/echo"))),
            [muster.to_str().unwrap(), "__exec", "42", "/bin/echo"]
        );
    }
}
