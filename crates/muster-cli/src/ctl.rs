//! `muster ctl`: control a running host (token-authenticated calls to
//! `muster.host`). Several hosts on one bus (a fleet) are told apart by
//! name: `status` asks each, `SERVICE@HOST` (or `--host`) picks one, and a
//! service named alone goes to every host that runs it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use muster_host::{ControlRequest, Controller, Done, HostRef, Status};
use serde::de::DeserializeOwned;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct CtlCmd {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    bus: BusArg,
    /// The host's token file [default: $MUSTER_TOKEN_FILE, else .muster/token].
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The host to control, by name, when several share the bus.
    #[arg(long, global = true, value_name = "NAME")]
    host: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Transactions, services and instances with pid, state and restarts.
    Status {
        /// Only this transaction.
        transaction: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a transaction of a context (a new id unless given).
    Start {
        /// The context [default: the only one in the manifest].
        context: Option<String>,
        /// Transaction id (20 characters A-Z0-9 are generated if omitted).
        #[arg(short, long)]
        transaction: Option<String>,
    },
    /// Stop a transaction, or one of its services.
    Stop(Target),
    /// Restart a transaction, or one of its services.
    Restart(Target),
    /// End a transaction: stop everything and forget it.
    Exit {
        /// Transaction [default: the only running one].
        #[arg(short, long)]
        transaction: Option<String>,
    },
    /// Re-read the manifest and apply the difference.
    Reload,
    /// The latest monitor sample of every instance: process figures and method statistics.
    Top {
        /// Print JSON (the full sample).
        #[arg(long)]
        json: bool,
        /// With --json: the full list of memory maps of this service's instances.
        #[arg(long, value_name = "SERVICE")]
        maps: Option<String>,
    },
    /// Print (and with -f follow) the output of a service's instances.
    Logs {
        /// The service (`SERVICE@HOST`: that host's instances).
        service: String,
        /// Transaction [default: the only running one].
        #[arg(short, long)]
        transaction: Option<String>,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// Lines of each instance's log to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Only this service (`SERVICE@HOST`: on that host only).
    service: Option<String>,
    /// Transaction [default: the only running one].
    #[arg(short, long)]
    transaction: Option<String>,
}

impl CtlCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let token = self.token()?;
        let fleet = Fleet::find(
            Controller::new(self.bus.client().await?, &token),
            self.host.clone(),
        )
        .await?;
        // A command for one host: the one named, or the only one.
        let call_one = |method: &'static str, req: ControlRequest| {
            let host = fleet.one();
            async move { call::<serde_json::Value>(method, req, &host?).await }
        };
        let req = |transaction: Option<String>, service: Option<String>| ControlRequest {
            transaction,
            service,
            ..ControlRequest::default()
        };
        match self.action {
            Action::Status { transaction, json } => {
                // A host that does not answer (it is going away) is said,
                // and the others still shown.
                let mut all = Vec::new();
                let mut last_error = None;
                for h in fleet.all() {
                    match call::<Status>("status", req(transaction.clone(), None), &h).await {
                        Ok(s) => all.push(s),
                        Err(e) => {
                            eprintln!("muster ctl: a host did not answer: {e}");
                            last_error = Some(e);
                        }
                    }
                }
                if let (true, Some(e)) = (all.is_empty(), last_error) {
                    return Err(e);
                }
                match (json, all.as_slice()) {
                    (true, [one]) => println!("{}", serde_json::to_string_pretty(one)?),
                    (true, _) => println!("{}", serde_json::to_string_pretty(&all)?),
                    (false, _) => {
                        for s in &all {
                            print_status(s, all.len() > 1);
                        }
                    }
                }
            }
            Action::Start {
                context,
                transaction,
            } => {
                let mut r = req(transaction, None);
                r.context = context;
                let d: Done = serde_json::from_value(call_one("start", r).await?)?;
                println!("started transaction {}", d.transaction);
            }
            Action::Stop(t) => fleet.on_service("stop", "stopping", t).await?,
            Action::Restart(t) => fleet.on_service("restart", "restarting", t).await?,
            Action::Exit { transaction } => {
                let d: Done =
                    serde_json::from_value(call_one("exit", req(transaction, None)).await?)?;
                println!("ending {}", d.transaction);
            }
            Action::Reload => {
                let v = call_one("reload", req(None, None)).await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Action::Top { json, maps } => {
                let mut r = req(None, maps.clone());
                r.maps = maps.is_some();
                let v = top_of(&fleet.all_named(), &r).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print!(
                        "{}",
                        crate::top::render(&v, crate::top::Sort::Cpu, 80, &Default::default())
                    );
                }
            }
            Action::Logs {
                service,
                transaction,
                follow,
                lines,
            } => {
                let (service, hosts) = fleet.running(&service, transaction.as_deref()).await?;
                let mut files: Vec<PathBuf> = Vec::new();
                for h in hosts {
                    files.extend(
                        call::<Vec<PathBuf>>(
                            "logs",
                            req(transaction.clone(), Some(service.clone())),
                            &h,
                        )
                        .await?,
                    );
                }
                logs(&files, lines, follow).await?;
            }
        }
        Ok(())
    }

    pub(crate) fn token(&self) -> anyhow::Result<String> {
        token_from(self.token_file.as_deref())
    }
}

/// The host's token: `MUSTER_TOKEN`, else the token file (`--token-file`,
/// `MUSTER_TOKEN_FILE`, else `.muster/token`).
pub(crate) fn token_from(file: Option<&Path>) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("MUSTER_TOKEN")
        && !t.is_empty()
    {
        return Ok(t);
    }
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MUSTER_TOKEN_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".muster/token"));
    muster_host::token::read(&path).with_context(|| {
        format!(
            "cannot read the host's token from {} (give --token-file or MUSTER_TOKEN_FILE)",
            path.display()
        )
    })
}

pub(crate) async fn call<T: DeserializeOwned>(
    method: &str,
    req: ControlRequest,
    host: &Controller,
) -> anyhow::Result<T> {
    match host.call::<T>(method, req).await {
        Ok(v) => Ok(v),
        Err(e) if e.code == muster::code::METHOD_NOT_FOUND => {
            bail!("no host on this bus ({e})")
        }
        Err(e) => bail!("{}", e.message),
    }
}

/// The hosts on the bus, and the one named with `--host`.
struct Fleet {
    controller: Controller,
    hosts: Vec<HostRef>,
    named: Option<HostRef>,
}

impl Fleet {
    async fn find(controller: Controller, named: Option<String>) -> anyhow::Result<Self> {
        let hosts = controller.hosts().await.unwrap_or_default();
        let named = match named {
            None => None,
            Some(n) => Some(pick(&hosts, &n)?),
        };
        Ok(Self {
            controller,
            hosts,
            named,
        })
    }

    /// The host a command without a service goes to: the one named, the
    /// only one, else an error that lists them.
    fn one(&self) -> anyhow::Result<Controller> {
        match (&self.named, self.hosts.as_slice()) {
            (Some(h), _) => Ok(self.controller.on(h)),
            (None, [one]) => Ok(self.controller.on(one)),
            // None listed (an older host, or a listing that failed): the
            // bus picks, as before fleets.
            (None, []) => Ok(self.controller.clone()),
            (None, many) => bail!(
                "{} hosts on this bus ({}): name one with --host",
                many.len(),
                names(many)
            ),
        }
    }

    /// Every host `status` asks: the one named, else all.
    fn all(&self) -> Vec<Controller> {
        match (&self.named, self.hosts.as_slice()) {
            (Some(h), _) => vec![self.controller.on(h)],
            (None, []) => vec![self.controller.clone()],
            (None, many) => many.iter().map(|h| self.controller.on(h)).collect(),
        }
    }

    /// [`Self::all`] with each host's name (empty when none is listed).
    fn all_named(&self) -> Vec<(String, Controller)> {
        match (&self.named, self.hosts.as_slice()) {
            (Some(h), _) => vec![(h.name.clone(), self.controller.on(h))],
            (None, []) => vec![(String::new(), self.controller.clone())],
            (None, many) => many
                .iter()
                .map(|h| (h.name.clone(), self.controller.on(h)))
                .collect(),
        }
    }

    /// `SERVICE@HOST` or `SERVICE`: the service and the hosts that run it
    /// (the one named; else every host whose status lists it).
    async fn running(
        &self,
        service: &str,
        transaction: Option<&str>,
    ) -> anyhow::Result<(String, Vec<Controller>)> {
        if let Some((s, h)) = service.split_once('@') {
            return Ok((
                s.to_owned(),
                vec![self.controller.on(&pick(&self.hosts, h)?)],
            ));
        }
        if self.named.is_some() || self.hosts.len() <= 1 {
            return Ok((service.to_owned(), vec![self.one()?]));
        }
        let mut with = Vec::new();
        for h in &self.hosts {
            let c = self.controller.on(h);
            let req = ControlRequest {
                transaction: transaction.map(str::to_owned),
                ..ControlRequest::default()
            };
            let st: Status = call("status", req, &c).await?;
            if st
                .transactions
                .iter()
                .any(|t| t.services.iter().any(|s| s.name == service))
            {
                with.push(c);
            }
        }
        if with.is_empty() {
            bail!(
                "no host on this bus runs {service} ({})",
                names(&self.hosts)
            );
        }
        Ok((service.to_owned(), with))
    }

    /// `stop` or `restart` of a transaction or of one service, on the
    /// hosts that run it.
    async fn on_service(&self, method: &'static str, doing: &str, t: Target) -> anyhow::Result<()> {
        let targets = match &t.service {
            Some(s) => self.running(s, t.transaction.as_deref()).await?,
            None => (String::new(), vec![self.one()?]),
        };
        let (service, hosts) = targets;
        for h in hosts {
            let req = ControlRequest {
                transaction: t.transaction.clone(),
                service: (!service.is_empty()).then(|| service.clone()),
                ..ControlRequest::default()
            };
            let d: Done = call(method, req, &h).await?;
            println!(
                "{doing} {}{}",
                d.transaction,
                if service.is_empty() {
                    String::new()
                } else {
                    format!("/{service}")
                }
            );
        }
        Ok(())
    }
}

/// The hosts `muster top` watches, by name: the one named, else every
/// host on the bus.
pub(crate) async fn watched_hosts(
    controller: Controller,
    named: Option<String>,
) -> anyhow::Result<Vec<(String, Controller)>> {
    Ok(Fleet::find(controller, named).await?.all_named())
}

/// The `top` of every host of `hosts`, as one list of transactions, each
/// with its host's name in `host` (when several share the bus).
pub(crate) async fn top_of(
    hosts: &[(String, Controller)],
    req: &ControlRequest,
) -> anyhow::Result<serde_json::Value> {
    let mut all = Vec::new();
    for (name, host) in hosts {
        let top: serde_json::Value = call("top", req.clone(), host).await?;
        for mut t in top.as_array().cloned().unwrap_or_default() {
            if hosts.len() > 1
                && let Some(o) = t.as_object_mut()
            {
                o.insert("host".into(), name.clone().into());
            }
            all.push(t);
        }
    }
    Ok(serde_json::Value::Array(all))
}

fn pick(hosts: &[HostRef], name: &str) -> anyhow::Result<HostRef> {
    hosts
        .iter()
        .find(|h| h.name == name)
        .cloned()
        .with_context(|| format!("no host {name:?} on this bus ({})", names(hosts)))
}

fn names(hosts: &[HostRef]) -> String {
    if hosts.is_empty() {
        return "none listed".to_owned();
    }
    hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_status(status: &Status, with_host: bool) {
    if with_host {
        println!("host {}", status.host);
    }
    let lost: Vec<String> = status
        .fleet
        .iter()
        .filter(|p| p.state == "lost")
        .map(|p| format!("{} (lost {:.0}s ago)", p.name, p.since_secs))
        .collect();
    if !lost.is_empty() {
        println!("hosts lost: {}", lost.join(", "));
    }
    if status.transactions.is_empty() {
        println!("no transactions");
    }
    for t in &status.transactions {
        println!(
            "{}  {}  {}{}  (restarts in window: {})",
            t.transaction,
            t.context,
            t.state,
            t.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            t.recent_restarts
        );
        println!(
            "  {:<14} {:>4} {:<22} {:>7} {:<10} {:>8} {:>9}  LAST EXIT",
            "SERVICE", "SLOT", "INSTANCE", "PID", "STATE", "RESTARTS", "UPTIME"
        );
        for s in &t.services {
            for i in &s.instances {
                println!(
                    "  {:<14} {:>4} {:<22} {:>7} {:<10} {:>8} {:>9}  {}",
                    s.name,
                    i.slot,
                    if i.instance.is_empty() {
                        "-"
                    } else {
                        &i.instance
                    },
                    i.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    i.state,
                    i.restarts,
                    i.uptime_secs
                        .map_or_else(|| "-".into(), |u| format!("{u:.1}s")),
                    i.last_exit.as_deref().unwrap_or("")
                );
            }
            if let Some(sc) = &s.schedule {
                println!(
                    "  {:<14} schedule {}{}: next {}, runs {} (ok {}, failed {}), skipped {}{}",
                    "",
                    sc.schedule,
                    if sc.paused { " (paused)" } else { "" },
                    sc.next.as_deref().unwrap_or("never"),
                    sc.runs,
                    sc.succeeded,
                    sc.failed,
                    sc.skipped,
                    sc.recent
                        .last()
                        .map(|r| format!(
                            ", last: {} for {}",
                            r.outcome.as_deref().unwrap_or("running"),
                            r.fire
                        ))
                        .unwrap_or_default()
                );
            }
        }
    }
}

/// Prints the last `lines` of each file, then (with `follow`) new output
/// as it comes, each line prefixed with the instance's file name.
async fn logs(files: &[PathBuf], lines: usize, follow: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // Per file: how far it was printed, and which file (inode) that was.
    let mut read_to = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        for l in &all[all.len().saturating_sub(lines)..] {
            println!("{}| {l}", label(f));
        }
        let inode = std::fs::metadata(f).map_or(0, |m| m.ino());
        read_to.push((text.len() as u64, inode));
    }
    if !follow {
        return Ok(());
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = crate::bus::wait_for_signal() => break,
        }
        for (f, (off, inode)) in files.iter().zip(read_to.iter_mut()) {
            let Ok(meta) = std::fs::metadata(f) else {
                continue;
            };
            if meta.ino() != *inode {
                print_rotated(f, *off, *inode)?;
                (*off, *inode) = (0, meta.ino());
            } else if meta.len() < *off {
                *off = 0; // truncated
            }
            if meta.len() > *off {
                *off += print_from(f, f, *off)?;
            }
        }
    }
    Ok(())
}

/// After a rotation of `file`: the rest of the file printed so far (now
/// `<file>.N`, found by its inode), then the newer rotated files whole,
/// oldest first. When it was rotated past what is kept, what is kept is
/// printed after a note that lines were skipped.
fn print_rotated(file: &Path, printed_to: u64, inode: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let rotated: Vec<(PathBuf, u64)> = (1..=1000)
        .map(|i| PathBuf::from(format!("{}.{i}", file.display())))
        .map_while(|p| std::fs::metadata(&p).ok().map(|m| (p, m.ino())))
        .collect();
    let newer = match rotated.iter().position(|(_, ino)| *ino == inode) {
        Some(i) => {
            print_from(&rotated[i].0, file, printed_to)?;
            &rotated[..i]
        }
        None => {
            println!(
                "{}| ... (rotated past the files kept: lines skipped)",
                label(file)
            );
            &rotated[..]
        }
    };
    for (p, _) in newer.iter().rev() {
        print_from(p, file, 0)?;
    }
    Ok(())
}

/// Prints the complete lines of `file` from byte `from`, labelled as
/// `label_of`; returns how many bytes they took.
fn print_from(file: &Path, label_of: &Path, from: u64) -> anyhow::Result<u64> {
    let Ok(mut f) = std::fs::File::open(file) else {
        return Ok(0);
    };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for l in String::from_utf8_lossy(&buf[..complete]).lines() {
        println!("{}| {l}", label(label_of));
    }
    Ok(complete as u64)
}

fn label(f: &Path) -> String {
    f.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
