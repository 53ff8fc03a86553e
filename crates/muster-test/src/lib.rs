//! Test support for muster's own tests: free ports, child processes that
//! are killed when a test ends, waiting with a deadline, and process
//! statistics read from `/proc`.

pub mod host;
pub mod registry;
pub mod zmtp;

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A base port with the two ports after it free too (a bus needs three).
/// Ports are handed out from a per-process range, so tests running in
/// parallel never get the same base.
///
/// The range stays below Linux's ephemeral ports (32768 and up): a client
/// that keeps reconnecting to a port nobody listens on (a bus being
/// restarted) can be given that same port as its own source port and
/// connect to itself (TCP simultaneous open), after which the bus cannot
/// bind it again.
pub fn free_port_base() -> u16 {
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_500; // LOW + SPAN + 3 < 32_768
    let start = (std::process::id() % 750) * 30;
    for _ in 0..2_000 {
        let offset = NEXT_PORT.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let Ok(p) = u16::try_from(LOW + (start + offset) % SPAN) else {
            continue;
        };
        if (0..3).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no three consecutive free ports on 127.0.0.1");
}

/// `zmq://127.0.0.1:<free base port>`.
pub fn free_bus_url() -> String {
    format!("zmq://127.0.0.1:{}", free_port_base())
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    /// Its stdout and stderr, when they were piped.
    ///
    /// # Panics
    /// When they were not piped, or were taken already.
    pub fn take_output(&mut self) -> (std::process::ChildStdout, std::process::ChildStderr) {
        let child = self.child.as_mut().expect("running");
        (
            child.stdout.take().expect("stdout piped"),
            child.stderr.take().expect("stderr piped"),
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (nothing once reaped: pid 0 would mean our own
    /// process group).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    ///
    /// # Panics
    /// When the process does not exit in time (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    ///
    /// # Panics
    /// When it does not exit in time (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            panic!("{} already reaped", self.name);
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `VmRSS` of a process in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `muster bus --listen URL` as a child process (`muster` is the path of
/// the binary under test).
///
/// It keeps its secret in `.muster/` of the working directory, where the
/// services a test starts from that directory find it: this returns once
/// the secret is there, or a service started next would have none.
pub fn spawn_bus_process(muster: &str, url: &str) -> Proc {
    let mut c = Command::new(muster);
    c.args(["bus", "--listen", url, "--log-level", "warn"])
        // Tests share the working directory; their jobs need not outlive
        // the bus.
        .args(["--queue-store", "memory"])
        .stdout(Stdio::null());
    let bus = Proc::spawn("bus", c);
    let secret = Path::new(".muster").join(muster_core::auth::SECRET_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !secret.exists() {
        assert!(
            Instant::now() < deadline,
            "the bus made no {} in 30 s",
            secret.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The secret may be an earlier bus's (tests share the working
    // directory): also wait for this one's ports, or a client that
    // subscribes at once may give up on a bus still starting on a loaded
    // machine ("no bus takes events").
    let addr: muster_zmq::BusAddr = url.parse().expect("bus url");
    for port in addr.port..=addr.port.saturating_add(2) {
        while std::net::TcpStream::connect((addr.host.as_str(), port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the bus at {url} took no connection on port {port} in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    bus
}

/// One of the example services (`echo`, `producer`, `subscriber`) as a
/// child process, through `muster __service NAME`.
pub fn spawn_example(muster: &str, url: &str, name: &str) -> Proc {
    let mut c = Command::new(muster);
    c.args(["__service", name, "--bus", url, "--log-level", "warn"]);
    Proc::spawn(name, c)
}

/// A fresh bus in this test process on free ports, a client connected to
/// it, and its URL: the start of most tests.
pub async fn bus_and_client() -> (muster_zmq::Bus, muster::Client, String) {
    let url = free_bus_url();
    let bus = start_bus(&url).await;
    let client = muster::Client::connect(&url)
        .await
        .expect("client connects");
    (bus, client, url)
}

/// A bus device running in this test process, on a runtime of its own
/// (one thread, never shut down): dropping or stopping the returned `Bus`
/// stops it.
///
/// Why not the test's runtime: a test's runtime waits, when the test
/// ends, for every task it runs, and twice in CI (and once in ten loaded
/// local runs) it waited for ever. gdb showed the bus's event forwarder
/// spinning inside omq's `recv` (a fan-in source signalled ready that
/// yields nothing, so the poll never returns) while that runtime shut
/// down around it. On a runtime that is never shut down, the forwarder
/// ends cleanly when the bus stops.
pub async fn start_bus(url: &str) -> muster_zmq::Bus {
    start_bus_with(url, muster_zmq::BusOptions::default()).await
}

/// [`start_bus`] with options of the test's choosing.
pub async fn start_bus_with(url: &str, options: muster_zmq::BusOptions) -> muster_zmq::Bus {
    let addr: muster_zmq::BusAddr = url.parse().expect("bus url");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("test-bus".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the test bus");
            runtime.block_on(async move {
                let bus = muster_zmq::Bus::start(addr, options).await;
                let _ = tx.send(bus);
                std::future::pending::<()>().await;
            });
        })
        .expect("a thread for the test bus");
    rx.await
        .expect("the test bus thread answers")
        .expect("bus starts")
}

/// `muster-test-bus URL LOG` (`bus` is the path of that binary), returned
/// once it says it serves: a bus in a process of its own, for tests that
/// kill it.
///
/// # Panics
/// When it ends before serving (its error is then on the test's stderr).
pub fn spawn_test_bus(bus: &str, url: &str, log: &Path) -> Proc {
    use std::io::BufRead;
    let mut c = Command::new(bus);
    c.arg(url)
        .arg(log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut p = Proc::spawn("muster-test-bus", c);
    let stdout = p
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("stdout piped");
    let mut line = String::new();
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "muster-test-bus {url} did not start");
    p
}

/// Waits until `n` instances of `service` are registered.
pub async fn wait_registered(
    client: &muster::Client,
    service: &str,
    n: usize,
) -> Vec<muster::registry::InstanceInfo> {
    eventually(
        Duration::from_secs(10),
        &format!("{n} x {service} registered"),
        || async {
            let all = client.instances().await.ok()?;
            let mine: Vec<_> = all.into_iter().filter(|i| i.service == service).collect();
            (mine.len() >= n).then_some(mine)
        },
    )
    .await
}

/// Says, where a user running `cargo test` sees it (not captured by the
/// test harness), that `test` was skipped and why.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The broker URL in the environment variable `var`; `None`, after saying
/// that `test` is skipped, when it is not set. `.ci/run` sets every such
/// variable, so in CI an unreachable broker fails the test instead.
pub fn broker_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skipped(
                test,
                &format!("{var} is not set (see .ci/run for the URL it uses)"),
            );
            None
        }
    }
}

/// A subscription to a host's lifecycle and context events (as
/// `docs/protocol.md`, "Lifecycle events", names them).
///
/// # Panics
/// When the bus at `bus` cannot be reached.
pub async fn lifecycle_events(bus: &str) -> muster::Subscription {
    let client = muster::Client::connect(bus).await.expect("client connects");
    client
        .subscribe(&["muster.control.>", "muster.context"])
        .await
        .expect("subscribed")
}

/// The counts of a work queue.
///
/// # Panics
/// When the bus cannot answer.
pub async fn queue_stats(
    transport: &muster::transport::SharedTransport,
    queue: &str,
) -> muster::queue::QueueStats {
    match transport
        .queue_command(queue, muster::queue::QueueCommand::Stats)
        .await
    {
        Ok(muster::queue::QueueReply::Stats(s)) => s,
        other => panic!("stats of {queue}: {other:?}"),
    }
}

/// Every number recorded, one per line, in the files of `dir` (as
/// `muster-test-worker --record` writes them), with how many times each.
pub fn recorded_numbers(dir: &std::path::Path) -> std::collections::HashMap<u32, u32> {
    let mut seen = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for n in text.lines().filter_map(|l| l.parse::<u32>().ok()) {
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}
