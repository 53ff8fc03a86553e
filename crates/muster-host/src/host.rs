//! The driver: owns the bus, the control service and the child processes,
//! feeds what happens to the [`Supervisor`] and carries out its effects.
//! One task holds all state, so there are no locks and every input is
//! handled to the end before the next.
//!
//! One file past 600 lines on purpose: start-up, the loop and the effects
//! are one task's code over one set of fields; the decisions themselves
//! live in [`crate::supervisor`], which is tested without processes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::time::DelayQueue;

use muster::Client;
use muster_core::auth::{KeyId, MasterSecret};
use muster_core::registry::HOST_SERVICE;
use muster_core::transport::SharedTransport;
use muster_core::{Error, ErrorKind};
use muster_zmq::{Bus, BusAddr, BusOptions, QueueStore, RegistryEvent, ZmqOptions, ZmqTransport};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::control::{self, Command, Done};
use crate::manifest::{Manifest, ManifestError, Substitutions};
use crate::supervisor::{Effect, Refusal, Supervisor, Timer};
use crate::{persist, process, token};

/// How to run a host.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Manifest files; the first may carry `[host]`.
    pub files: Vec<PathBuf>,
    /// The `muster` executable that implements `__guard` and `__exec`
    /// (children die with the host); `None` spawns services directly.
    /// Children start through `muster-launch` when it is beside it
    /// ([`process::Launcher`]).
    pub launcher: Option<PathBuf>,
    /// `${...}` values for the manifest.
    pub substitutions: Substitutions,
    /// Overrides `[host] bus`.
    pub bus: Option<String>,
    /// Overrides `[host] state_dir`.
    pub state_dir: Option<PathBuf>,
    /// Overrides `[host] http` (`"off"` turns it off).
    pub http: Option<String>,
    /// Overrides `[host] name`.
    pub name: Option<String>,
    /// Overrides `[host] bind`.
    pub bind: Option<String>,
    /// Overrides `[host] advertise`.
    pub advertise: Option<String>,
    /// Overrides `[host] rpc_ports`.
    pub rpc_ports: Option<muster_zmq::PortRange>,
    /// Sets `[host] plain_tcp` (never unsets it).
    pub plain_tcp: bool,
}

/// Where a running host can be reached.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// The bus URL.
    pub bus: String,
    /// The control service's endpoint.
    pub control: String,
    /// The token file.
    pub token_file: PathBuf,
    /// Where instance logs go.
    pub log_dir: PathBuf,
    /// Where the HTTP endpoint listens, if on.
    pub http: Option<String>,
    /// Transactions started at boot.
    pub transactions: Vec<String>,
}

/// Why a host could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The manifest is not valid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The bus or the control service could not start.
    #[error(transparent)]
    Bus(#[from] Error),
    /// The bus's master secret could not be read or made.
    #[error("cannot use the bus secret in {}", dir.display())]
    Secret {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: muster_core::auth::AuthError,
    },
    /// The state directory or token could not be written.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl HostOptions {
    fn apply_overrides(&self, manifest: &mut Manifest) {
        if let Some(b) = &self.bus {
            manifest.host.bus.clone_from(b);
        }
        if let Some(d) = &self.state_dir {
            manifest.host.state_dir.clone_from(d);
        }
        if let Some(h) = &self.http {
            manifest.host.http = (h != "off").then(|| h.clone());
        }
        if let Some(n) = &self.name {
            manifest.host.name = Some(n.clone());
        }
        if let Some(b) = &self.bind {
            manifest.host.bind.clone_from(b);
        }
        if let Some(a) = &self.advertise {
            manifest.host.advertise = Some(a.clone());
        }
        if let Some(r) = self.rpc_ports {
            manifest.host.rpc_ports = Some(r);
        }
        manifest.host.plain_tcp |= self.plain_tcp;
    }
}

enum Input {
    Sampled {
        samples: Vec<crate::monitor::MonitorSample>,
        over: Vec<crate::monitor::OverLimit>,
    },
    Exited {
        transaction: String,
        generation: u64,
        instance: String,
        pid: u32,
        status: std::process::ExitStatus,
    },
    Timer(Timer),
}

/// Runs the host until `stop` resolves (or SIGINT/SIGTERM), then stops
/// every service in reverse dependency order and returns. `ready` gets
/// where the host can be reached once it is up.
///
/// # Errors
/// An invalid manifest, a bus that cannot bind, an unwritable state dir.
pub async fn run(
    options: HostOptions,
    ready: Option<oneshot::Sender<HostInfo>>,
    stop: impl Future<Output = ()>,
) -> Result<(), HostError> {
    // Eight or so descriptors per instance: the usual soft limit would
    // end the host near 120 of them.
    crate::fdlimit::raise();
    let mut manifest = Manifest::load(&options.files, &options.substitutions)?;
    options.apply_overrides(&mut manifest);
    let io = |what: String| move |source| HostError::Io { what, source };
    let state_dir = manifest.host.state_dir.clone();
    // Only the host's user may read what is in it (`docs/security.md`).
    muster_core::fs::private_dir(&state_dir)
        .map_err(io(format!("cannot create {}", state_dir.display())))?;
    let secret = MasterSecret::load_or_create(&state_dir).map_err(|e| HostError::Secret {
        dir: state_dir.clone(),
        source: e,
    })?;
    let token_file = state_dir.join("token");
    let token = token::ensure(&token_file).map_err(io(format!(
        "cannot create the token {}",
        token_file.display()
    )))?;
    let log_dir = state_dir.join("logs");

    // A `zmq://` bus the host owns is embedded; a broker, or the embedded
    // bus of another host of the fleet (`own_bus = false`), is joined like
    // its instances join it, and watched by listing its registry
    // (`watch.rs`).
    let curve = match &manifest.host.curve {
        Some(dir) => Some(muster_zmq::Curve::load(dir).map_err(Error::from)?),
        None => muster_zmq::Curve::from_environment().map_err(Error::from)?,
    };
    let owned = manifest
        .host
        .bus
        .parse::<BusAddr>()
        .ok()
        .filter(|_| manifest.host.own_bus);
    let (bus, watch, transport) = match owned {
        Some(addr) => {
            let (bus, transport) = embedded_bus(&manifest, &secret, addr, curve.clone()).await?;
            (Some(bus), None, transport)
        }
        None => {
            let mut joining = muster::bus::BusOptions::default();
            // The host's own credential: on an embedded bus of the fleet
            // (which shares `bus.secret`), it may serve `muster.host-<name>`.
            joining.credential = Some(secret.credential(KeyId::Bus));
            joining.curve.clone_from(&curve);
            joining.plain_tcp = manifest.host.plain_tcp;
            joining.bind_host = Some(manifest.host.bind.clone());
            joining.advertise_host.clone_from(&manifest.host.advertise);
            joining.rpc_ports = manifest.host.rpc_ports;
            let transport = muster::bus::connect_with(&manifest.host.bus, None, &joining).await?;
            let watch = crate::watch::Watch::start(transport.clone()).await?;
            (None, Some(watch), transport)
        }
    };
    let mut registry = match (&bus, &watch) {
        (Some(b), _) => b.watch(),
        (None, Some(w)) => w.subscribe(),
        (None, None) => unreachable!("a host has a bus or a watch"),
    };
    let bus_url = manifest.host.bus.clone();
    let name = host_name(&manifest);
    let client = Client::new(transport.clone());

    let (commands_tx, mut commands) = mpsc::channel::<Command>(64);
    let monitor = crate::monitor::SharedMonitor::default();
    let recent: crate::http::Recent = Arc::default();
    let http_stop = tokio_util::sync::CancellationToken::new();
    let http_addr = match &manifest.host.http {
        Some(addr) => {
            let stats: Arc<dyn Fn() -> muster_zmq::bus::BusStats + Send + Sync> = match &bus {
                Some(b) => {
                    let h = b.stats_handle();
                    Arc::new(move || h.snapshot())
                }
                None => Arc::new(muster_zmq::bus::BusStats::default),
            };
            let state = crate::http::AppState {
                host: name.as_str().into(),
                monitor: monitor.clone(),
                commands: commands_tx.clone(),
                client: client.clone(),
                token: token.clone().into(),
                gateway_open: manifest.host.gateway_open,
                recent: recent.clone(),
                bus: stats,
                max_body: muster_core::wire::DEFAULT_MAX_MESSAGE_SIZE,
                http_hosts: manifest.host.http_hosts.clone().into(),
                public_read: manifest.host.http_public_read,
            };
            let bound = crate::http::spawn(addr, state, http_stop.clone())
                .await
                .map_err(io(format!(
                    "cannot serve HTTP on {addr} (set [host] http, or \"off\")"
                )))?;
            Some(bound)
        }
        None => None,
    };
    // One `muster.host` instance per host, named after it: `muster ctl`
    // addresses a host of a fleet by it.
    let mut control_options = muster::StartOptions::default();
    control_options.instance = Some(format!("{HOST_SERVICE}-{name}"));
    let control = control::service(token, commands_tx, monitor.clone())
        .start_with(transport.clone(), control_options)
        .await?;
    let control_endpoint = client
        .instances()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|i| i.service == HOST_SERVICE && i.instance == format!("{HOST_SERVICE}-{name}"))
        .map(|i| i.endpoint)
        .unwrap_or_default();

    let guard = match &options.launcher {
        Some(l) => {
            Some(process::Guard::start(l).map_err(io("cannot start the guard process".into()))?)
        }
        None => None,
    };
    let (inputs_tx, mut inputs) = mpsc::unbounded_channel::<Input>();
    let mut driver = Driver {
        monitor,
        recent,
        sampling: false,
        sampled_at: None,
        bus,
        curve: curve.map(|c| c.dir().to_owned()),
        guard,
        launcher: options.launcher.as_deref().map(process::Launcher::beside),
        supervisor: Supervisor::new(&manifest.contexts),
        manifest,
        options,
        bus_url: bus_url.clone(),
        name,
        peers: std::collections::BTreeMap::new(),
        secret,
        log_dir: log_dir.clone(),
        client: client.clone(),
        inputs: inputs_tx,
        timers: DelayQueue::new(),
    };
    let restored = persist::load(&state_dir);
    let (booted, effects) = driver.supervisor.boot(Instant::now(), &restored);
    driver.apply(effects).await;
    tracing::info!(bus = %bus_url, control = %control_endpoint, token = %token_file.display(), "host running");
    // Under systemd (`Type=notify`): the host is ready now, its contexts
    // booted. Without NOTIFY_SOCKET this does nothing.
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("running on {bus_url}")),
    ]);
    if let Some(ready) = ready {
        let _ = ready.send(HostInfo {
            bus: bus_url.clone(),
            control: control_endpoint,
            token_file,
            log_dir,
            http: http_addr,
            transactions: booted,
        });
    }

    driver
        .drive(stop, &mut inputs, &mut commands, &mut registry)
        .await?;
    tracing::info!("host stopped every service");
    http_stop.cancel();
    if let Some(g) = driver.guard.take() {
        g.close();
    }
    control.stop().await;
    if let Some(w) = watch {
        w.stop().await;
    }
    transport.close().await;
    if let Some(b) = driver.bus.take() {
        b.stop().await;
    }
    Ok(())
}

/// Tells systemd (the `NOTIFY_SOCKET` of a `Type=notify` unit) how the
/// host is; a failure is logged, never fatal.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// How long the claim of a scheduled run's fire time is kept: a day, past
/// any catch-up of a host that was down (which then finds the fire times
/// the others ran taken).
const SCHEDULE_CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// When an ended instance's `muster.gone` notice goes out a second time.
const GONE_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The host's name: `[host] name`, else the machine's hostname up to its
/// first dot, with what a name cannot hold written `-`.
fn host_name(manifest: &Manifest) -> String {
    if let Some(n) = &manifest.host.name {
        return n.clone();
    }
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let first = machine.trim().split('.').next().unwrap_or("");
    let mut name: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, "host-");
        name.truncate(64);
    }
    name
}

/// Starts the host's own bus on `addr` (with its job log in the state
/// directory) and connects to it as the bus's owner.
async fn embedded_bus(
    manifest: &Manifest,
    secret: &MasterSecret,
    addr: BusAddr,
    curve: Option<muster_zmq::Curve>,
) -> Result<(Bus, SharedTransport), HostError> {
    let mut bus_options = BusOptions::default();
    bus_options.secret = Some(secret.clone());
    bus_options.curve.clone_from(&curve);
    bus_options.plain_tcp = manifest.host.plain_tcp;
    bus_options.heartbeats_per_sec = manifest.host.heartbeats_per_sec;
    bus_options.queue_limits.bytes =
        usize::try_from(manifest.host.queue_max_bytes).unwrap_or(usize::MAX);
    if !manifest.host.queue_in_memory {
        bus_options.queue_store = QueueStore::Disk {
            path: manifest.host.state_dir.join("queues.redb"),
            fsync: manifest.host.queue_fsync,
        };
    }
    let bus = Bus::start(addr.clone(), bus_options).await.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("{e} (is another host or bus running on {addr}?)"),
        )
    })?;
    let mut zmq_options = ZmqOptions::default();
    // The host is the bus's owner: only it may serve reserved names.
    zmq_options.credential = Some(secret.credential(KeyId::Bus));
    zmq_options.bind_host.clone_from(&manifest.host.bind);
    zmq_options
        .advertise_host
        .clone_from(&manifest.host.advertise);
    zmq_options.rpc_ports = manifest.host.rpc_ports;
    zmq_options.curve = curve;
    zmq_options.plain_tcp = manifest.host.plain_tcp;
    let transport: SharedTransport = Arc::new(ZmqTransport::connect(addr, zmq_options).await?);
    Ok((bus, transport))
}

struct Driver {
    monitor: crate::monitor::SharedMonitor,
    recent: crate::http::Recent,
    /// A sample is being taken.
    sampling: bool,
    /// When the last sample was started.
    sampled_at: Option<Instant>,
    /// The embedded bus; `None` on a broker or on another host's bus.
    bus: Option<Bus>,
    /// The CURVE keys directory the instances are given (`MUSTER_CURVE`).
    curve: Option<PathBuf>,
    /// The host's name.
    name: String,
    /// The other hosts of the bus: name -> (up, since).
    peers: std::collections::BTreeMap<String, (bool, Instant)>,
    guard: Option<process::Guard>,
    /// What children start as, from `HostOptions::launcher`.
    launcher: Option<process::Launcher>,
    supervisor: Supervisor,
    manifest: Manifest,
    options: HostOptions,
    bus_url: String,
    secret: MasterSecret,
    log_dir: PathBuf,
    client: Client,
    inputs: mpsc::UnboundedSender<Input>,
    /// The supervisor's timers (backoffs, stop deadlines, schedules), due
    /// in this loop; they end with it.
    timers: DelayQueue<crate::supervisor::Timer>,
}

impl Driver {
    /// The host's loop: signals, the supervisor's timers, commands and the
    /// registry's news, until a stop and every service has ended.
    async fn drive(
        &mut self,
        stop: impl Future<Output = ()>,
        inputs: &mut mpsc::UnboundedReceiver<Input>,
        commands: &mut mpsc::Receiver<Command>,
        registry: &mut tokio::sync::broadcast::Receiver<RegistryEvent>,
    ) -> Result<(), HostError> {
        let mut sample_every = tokio::time::interval(self.manifest.host.monitor_every);
        sample_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stop = std::pin::pin!(stop);
        let mut signals = Signals::new()?;
        let mut stopping = false;
        loop {
            if stopping && self.supervisor.is_idle() {
                break;
            }
            tokio::select! {
                () = &mut stop, if !stopping => {
                    stopping = true;
                    self.shutdown().await;
                }
                () = signals.recv(), if !stopping => {
                    stopping = true;
                    self.shutdown().await;
                }
                Some(input) = inputs.recv() => self.input(input).await,
                Some(timer) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                    self.input(Input::Timer(timer.into_inner())).await;
                }
                _ = sample_every.tick(), if !self.sampling && !stopping => self.sample(),
                Some(cmd) = commands.recv() => self.command(cmd).await,
                ev = registry.recv() => match ev {
                    Ok(RegistryEvent::Registered(info)) => {
                        if info.service == HOST_SERVICE {
                            self.peer(&info.instance, true).await;
                        }
                        let e = self.supervisor.registered(Instant::now(), &info.instance);
                        self.apply(e).await;
                    }
                    Ok(RegistryEvent::Expired { service, instance }) => {
                        if service == HOST_SERVICE {
                            self.peer(&instance, false).await;
                        }
                        let e = self.supervisor.expired(Instant::now(), &instance);
                        self.apply(e).await;
                    }
                    Ok(RegistryEvent::Updated(u)) => {
                        let e = self.supervisor.updated(Instant::now(), &u.instance, u.status);
                        self.apply(e).await;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "registry watch fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        Ok(())
    }

    /// Another host's control service joined (`up`) or left the registry:
    /// remembered for `status`, logged and published on `muster.fleet`.
    async fn peer(&mut self, instance: &str, up: bool) {
        let Some(name) = instance
            .strip_prefix(HOST_SERVICE)
            .and_then(|r| r.strip_prefix('-'))
        else {
            return;
        };
        if name == self.name || self.peers.get(name).is_some_and(|(u, _)| *u == up) {
            return;
        }
        self.peers.insert(name.to_owned(), (up, Instant::now()));
        let state = if up { "up" } else { "lost" };
        if up {
            tracing::info!(host = name, "a host of the fleet is up");
        } else {
            tracing::warn!(
                host = name,
                "a host of the fleet is lost (its control service left the bus)"
            );
        }
        let event = crate::events::FleetEvent {
            by: self.name.clone(),
            host: name.to_owned(),
            state: state.to_owned(),
        };
        if let Err(e) = self
            .client
            .publish(crate::events::FLEET_TOPIC, &event)
            .await
        {
            tracing::debug!(error = %e, "fleet event not published");
        }
    }

    /// Starts taking a sample in the background; it comes back as
    /// `Input::Sampled`.
    fn sample(&mut self) {
        let now = Instant::now();
        let status = self.supervisor.status(now, None);
        // Past a few hundred instances, sampled less often than each tick.
        let every = self.manifest.host.monitor_every;
        let running = status
            .transactions
            .iter()
            .flat_map(|t| &t.services)
            .flat_map(|s| &s.instances)
            .filter(|i| i.pid.is_some())
            .count();
        let due = crate::monitor::sample_interval(every, running);
        // Half a tick early counts as on time: ticks drift.
        if self
            .sampled_at
            .is_some_and(|at| now.duration_since(at) + every / 2 < due)
        {
            return;
        }
        self.sampled_at = Some(now);
        self.sampling = true;
        let limits = self.supervisor.limits();
        let monitor = self.monitor.clone();
        let client = self.client.clone();
        let tx = self.inputs.clone();
        tokio::spawn(async move {
            let (samples, over) =
                crate::monitor::sample(&monitor, &status, &client, &limits, due).await;
            let _ = tx.send(Input::Sampled { samples, over });
        });
    }

    async fn shutdown(&mut self) {
        tracing::info!("stopping every service");
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        let e = self.supervisor.shutdown(Instant::now());
        self.apply(e).await;
    }

    async fn input(&mut self, input: Input) {
        let now = Instant::now();
        let e = match input {
            Input::Sampled { samples, over } => {
                self.sampling = false;
                for s in &samples {
                    if let Err(e) = self
                        .client
                        .publish(&crate::monitor::monitor_topic(&s.transaction), s)
                        .await
                    {
                        tracing::debug!(error = %e, "monitor sample not published");
                    }
                }
                let mut effects = Vec::new();
                for o in over {
                    effects.extend(self.supervisor.over_limit(now, &o.instance, &o.reason));
                }
                effects
            }
            Input::Exited {
                transaction,
                generation,
                instance,
                pid,
                status,
            } => {
                // Callers stop picking it now, not after the heartbeat ttl;
                // the jobs it held count the crash as an attempt.
                let cause = process::exit_status(status).describe();
                if let Some(bus) = &self.bus {
                    bus.evict(&instance, &cause);
                }
                // The calls it was still waiting for stop where they run.
                // Said twice: an instance hears these notices only while it
                // runs requests, and one that began listening a moment ago
                // may not be subscribed yet (`runtime/in_flight.rs`).
                let gone = serde_json::json!({ "caller": &instance });
                if let Err(e) = self
                    .client
                    .publish(muster::registry::GONE_TOPIC, &gone)
                    .await
                {
                    tracing::debug!(error = %e, "gone notice not published");
                }
                let client = self.client.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(GONE_AGAIN).await;
                    if let Err(e) = client.publish(muster::registry::GONE_TOPIC, &gone).await {
                        tracing::debug!(error = %e, "gone notice not published again");
                    }
                });
                // Whatever the instance started and left behind goes too.
                process::signal(pid, crate::supervisor::StopSignal::Kill);
                if let Some(g) = &mut self.guard {
                    g.remove(pid);
                }
                self.supervisor
                    .exited(now, &transaction, generation, process::exit_status(status))
            }
            Input::Timer(t) => self.supervisor.timer(now, t),
        };
        self.apply(e).await;
    }

    /// Claims a scheduled run's fire time on the bus for this host, so one
    /// host of a fleet runs it; `None` when it is this host's, else why it
    /// is not (another host has it, or the bus could not be asked: then
    /// the run is let go, never run twice, as services' own schedules do).
    async fn claimed_elsewhere(&self, key: &str) -> Option<String> {
        match self
            .client
            .transport()
            .claim(key, &self.name, SCHEDULE_CLAIM_TTL)
            .await
        {
            Ok(true) => None,
            Ok(false) => Some("another host of the fleet ran this fire time".to_owned()),
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot claim a scheduled run; it does not run");
                Some(format!("the fire time could not be claimed: {e}"))
            }
        }
    }

    /// Carries out effects, and those that follow from them (a spawn
    /// answers with `spawned`), until none are left.
    async fn apply(&mut self, effects: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Spawn(s) => {
                    if let Some(claim) = &s.claim
                        && let Some(holder) = self.claimed_elsewhere(&claim.key).await
                    {
                        let now = Instant::now();
                        queue.extend(self.supervisor.ran_elsewhere(
                            now,
                            &s.transaction,
                            s.generation,
                            &holder,
                        ));
                        continue;
                    }
                    let launch = process::Launch {
                        url: &self.bus_url,
                        secret: &self.secret,
                        log_dir: &self.log_dir,
                        log_rotation: crate::instance_log::LogRotation {
                            max_bytes: self.manifest.host.log_max_bytes,
                            keep: self.manifest.host.log_keep,
                        },
                        bind_host: &self.manifest.host.bind,
                        advertise_host: self.manifest.host.advertise.as_deref(),
                        rpc_ports: self.manifest.host.rpc_ports,
                        curve: self.curve.as_deref(),
                        plain_tcp: self.manifest.host.plain_tcp,
                    };
                    let launched = process::spawn(&s, &launch, self.launcher.as_ref());
                    let now = Instant::now();
                    let more = match launched.and_then(|c| {
                        c.id()
                            .map(|p| (p, c))
                            .ok_or_else(|| std::io::Error::other("no pid"))
                    }) {
                        Ok((pid, mut child)) => {
                            if let Some(g) = &mut self.guard {
                                g.add(pid);
                            }
                            let tx = self.inputs.clone();
                            let (transaction, generation, instance) =
                                (s.transaction.clone(), s.generation, s.instance.clone());
                            tokio::spawn(async move {
                                if let Ok(status) = child.wait().await {
                                    let _ = tx.send(Input::Exited {
                                        transaction,
                                        generation,
                                        instance,
                                        pid,
                                        status,
                                    });
                                }
                            });
                            self.supervisor
                                .spawned(now, &s.transaction, s.generation, pid)
                        }
                        Err(e) => self.supervisor.spawn_failed(
                            now,
                            &s.transaction,
                            s.generation,
                            &format!("cannot run {}: {e}", s.spec.command),
                        ),
                    };
                    queue.extend(more);
                }
                Effect::Signal { pid, signal } => process::signal(pid, signal),
                Effect::Timer { after, timer } => {
                    if after.is_zero() {
                        let _ = self.inputs.send(Input::Timer(timer));
                    } else {
                        self.timers.insert(timer, after);
                    }
                }
                Effect::Publish { topic, body } => {
                    {
                        let mut recent = self
                            .recent
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        recent.push_back(body.clone());
                        while recent.len() > crate::http::RECENT_EVENTS {
                            recent.pop_front();
                        }
                    }
                    if let Err(e) = self.client.publish(&topic, &body).await {
                        tracing::warn!(topic, error = %e, "cannot publish a host event");
                    }
                }
                Effect::Persist => {
                    let record = self.supervisor.persisted();
                    if let Err(e) = persist::save(&self.manifest.host.state_dir, &record) {
                        tracing::error!(error = %e, "cannot record the running transactions");
                    }
                }
            }
        }
    }

    /// Resolves an omitted transaction: the only running one.
    fn resolve(&self, transaction: Option<String>) -> Result<String, Refusal> {
        if let Some(t) = transaction {
            return Ok(t);
        }
        let all = self.supervisor.transactions();
        let running: Vec<&(String, String, bool)> = all.iter().filter(|t| t.2).collect();
        match running.as_slice() {
            [one] => Ok(one.0.clone()),
            [] => Err(Refusal::NoneRunning),
            many => Err(Refusal::SeveralRunning(
                many.iter().map(|t| format!("{} ({})", t.0, t.1)).collect(),
            )),
        }
    }

    /// Runs `act` on the addressed transaction and carries out its effects.
    async fn on_transaction(
        &mut self,
        transaction: Option<String>,
        act: impl FnOnce(&mut Supervisor, Instant, &str) -> (Result<(), Refusal>, Vec<Effect>),
    ) -> Result<Done, Refusal> {
        let t = self.resolve(transaction)?;
        let (r, e) = act(&mut self.supervisor, Instant::now(), &t);
        self.apply(e).await;
        r.map(|()| Done { transaction: t })
    }

    async fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Status { transaction, reply } => {
                let mut status = self.supervisor.status(now, transaction.as_deref());
                status.host.clone_from(&self.name);
                status.fleet = self
                    .peers
                    .iter()
                    .map(|(name, (up, since))| crate::status::PeerStatus {
                        name: name.clone(),
                        state: if *up { "up" } else { "lost" }.to_owned(),
                        since_secs: now.duration_since(*since).as_secs_f64(),
                    })
                    .collect();
                let _ = reply.send(Ok(status));
            }
            Command::Start {
                context,
                transaction,
                reply,
            } => {
                let (r, e) = self.supervisor.start(now, context.as_deref(), transaction);
                // Answered before the processes are spawned: a context of
                // a thousand instances takes seconds to fork, longer than
                // a caller's deadline, and `started` events report them.
                let _ = reply.send(r.map(|transaction| Done { transaction }));
                self.apply(e).await;
            }
            Command::Stop {
                transaction,
                service,
                reply,
            } => {
                let r = self
                    .on_transaction(transaction, |s, now, t| s.stop(now, t, service.as_deref()))
                    .await;
                let _ = reply.send(r);
            }
            Command::Restart {
                transaction,
                service,
                reply,
            } => {
                let r = self
                    .on_transaction(transaction, |s, now, t| {
                        s.restart(now, t, service.as_deref())
                    })
                    .await;
                let _ = reply.send(r);
            }
            Command::Exit { transaction, reply } => {
                let r = self
                    .on_transaction(transaction, |s, now, t| s.exit(now, t))
                    .await;
                let _ = reply.send(r);
            }
            Command::Reload { reply } => {
                let r = match Manifest::load(&self.manifest.files, &self.options.substitutions) {
                    Ok(mut m) => {
                        self.options.apply_overrides(&mut m);
                        if m.host != self.manifest.host {
                            tracing::warn!(
                                "[host] settings changed; they apply when the host starts again"
                            );
                        }
                        let (report, e) = self.supervisor.reload(now, &m.contexts);
                        self.manifest.contexts = m.contexts;
                        self.apply(e).await;
                        Ok(report)
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            Command::Logs {
                transaction,
                service,
                reply,
            } => {
                let r = self.resolve(transaction).and_then(|t| {
                    let status = self.supervisor.status(now, Some(&t));
                    let svc = status
                        .transactions
                        .first()
                        .and_then(|tx| tx.services.iter().find(|s| s.name == service))
                        .ok_or_else(|| Refusal::UnknownService {
                            service: service.clone(),
                            within: format!("transaction {t}"),
                        })?;
                    Ok(svc
                        .instances
                        .iter()
                        .map(|i| process::log_path(&self.log_dir, &t, &service, i.slot))
                        .collect())
                });
                let _ = reply.send(r);
            }
        }
    }
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, HostError> {
        use tokio::signal::unix::{SignalKind, signal};
        let io = |source| HostError::Io {
            what: "cannot watch signals".into(),
            source,
        };
        Ok(Self {
            int: signal(SignalKind::interrupt()).map_err(io)?,
            term: signal(SignalKind::terminate()).map_err(io)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => tracing::info!("SIGINT"),
            _ = self.term.recv() => tracing::info!("SIGTERM"),
        }
    }
}
