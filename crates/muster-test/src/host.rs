//! A host as the tests run it: `muster up` on a manifest in a temporary
//! directory of its own, `muster ctl` against it, its lifecycle events, and
//! a small HTTP client for its endpoint.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use muster::{Event, Subscription};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{Proc, eventually, free_bus_url};

/// How long the host tests wait for anything.
pub const WAIT: Duration = Duration::from_secs(20);

/// A fresh directory for test `tag` of this process.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muster-host-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The `muster-test-service` binary beside `muster`.
///
/// # Panics
/// When it was not built.
pub fn test_service(muster: &str) -> String {
    binary_beside(muster, "muster-test-service")
}

/// The binary `name` in the directory of the binary `beside`: the
/// workspace's binaries are built side by side.
///
/// # Panics
/// When it was not built.
pub fn binary_beside(beside: &str, name: &str) -> String {
    let p = std::path::Path::new(beside).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// A host running a manifest in its own temporary directory.
#[derive(Debug)]
pub struct Host {
    /// The `muster up` process.
    pub proc: Proc,
    /// Its working directory (the manifest, `.muster/`, `host.log`).
    pub dir: PathBuf,
    /// Its bus URL.
    pub bus: String,
    muster: String,
}

impl Host {
    /// Writes `manifest` (with `[host] bus` set) and starts `muster up`
    /// (`muster` is the binary under test).
    ///
    /// # Panics
    /// When the host does not answer `ctl status` in time.
    pub async fn up(muster: &str, tag: &str, manifest: &str) -> Self {
        let dir = tempdir(tag);
        let bus = free_bus_url();
        let text = if manifest.contains("[host]") {
            manifest.replace("[host]", &format!("[host]\nbus = \"{bus}\""))
        } else {
            format!("[host]\nbus = \"{bus}\"\nhttp = \"off\"\n\n{manifest}")
        };
        std::fs::write(dir.join("muster.toml"), text).unwrap();
        Self::start(muster, dir, bus).await
    }

    /// Starts `muster up` in `dir` (which holds `muster.toml`).
    ///
    /// # Panics
    /// When the host does not answer `ctl status` in time.
    pub async fn start(muster: &str, dir: PathBuf, bus: String) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("host.log"))
            .unwrap();
        let mut c = Command::new(muster);
        c.args(["up", "muster.toml", "--log-level", "info"])
            .current_dir(&dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let host = Self {
            proc: Proc::spawn("muster up", c),
            dir,
            bus,
            muster: muster.to_owned(),
        };
        eventually(WAIT, "the host answers ctl status", || async {
            host.try_status()
        })
        .await;
        host
    }

    /// `muster ctl ARGS --bus BUS` in the host's directory.
    ///
    /// # Panics
    /// When `muster` cannot be run.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.muster)
            .arg("ctl")
            .args(args)
            .args(["--bus", &self.bus])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctl status --json`, when it answers.
    pub fn try_status(&self) -> Option<Value> {
        let o = self.ctl(&["status", "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// `ctl status --json`.
    ///
    /// # Panics
    /// When it does not answer.
    pub fn status(&self) -> Value {
        self.try_status().expect("ctl status works")
    }

    /// The one transaction's id.
    ///
    /// # Panics
    /// When there is none.
    pub fn transaction(&self) -> String {
        self.status()["transactions"][0]["transaction"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `(pid, state, restarts)` of `service` slot `slot`.
    ///
    /// # Panics
    /// When there is no such service.
    pub fn slot(&self, service: &str, slot: usize) -> (Option<u32>, String, u64) {
        let st = self.status();
        let s = st["transactions"][0]["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap_or_else(|| panic!("no {service} in {st}"))
            .clone();
        let i = &s["instances"][slot];
        (
            i["pid"].as_u64().map(|p| p as u32),
            i["state"].as_str().unwrap().to_owned(),
            i["restarts"].as_u64().unwrap(),
        )
    }

    /// Waits until `service` slot `slot` is in `state`; its pid.
    ///
    /// # Panics
    /// When it does not get there within [`WAIT`].
    pub async fn wait_state(&self, service: &str, slot: usize, state: &str) -> Option<u32> {
        eventually(WAIT, &format!("{service}.{slot} {state}"), || async {
            let (pid, s, _) = self.slot(service, slot);
            (s == state).then_some(pid)
        })
        .await
    }

    /// The host's lifecycle and context events from now on.
    pub async fn events(&self) -> Subscription {
        crate::lifecycle_events(&self.bus).await
    }

    /// A client of the host's bus with the host's own credential (its
    /// `.muster/bus.secret`), as a program started in its directory has.
    ///
    /// # Panics
    /// When the secret cannot be read or the bus reached.
    pub async fn client(&self) -> muster::Client {
        let secret = std::fs::read_to_string(self.dir.join(".muster/bus.secret"))
            .expect("the host's bus secret");
        let mut options = muster::bus::BusOptions::default();
        options.credential =
            Some(muster_core::auth::Credential::parse(&secret).expect("a credential"));
        let transport = muster::bus::connect_with(&self.bus, None, &options)
            .await
            .expect("the host's bus");
        muster::Client::new(transport)
    }

    /// What the host logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("host.log")).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.proc.pid() != 0 {
            self.proc.signal(Signal::SIGTERM);
            let _ = self.proc.wait_exit(Duration::from_secs(10));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Next event matching `pred`, within [`WAIT`].
///
/// # Panics
/// When none comes.
pub async fn next(events: &mut Subscription, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(Event { payload, .. }) = events.recv().await {
            if pred(&payload) {
                return Some(payload);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(v)) => v,
        _ => panic!("no event: {what}"),
    }
}

/// Matches the lifecycle event `event` of `service`.
pub fn is(service: &str, event: &str) -> impl Fn(&Value) -> bool {
    let (service, event) = (service.to_owned(), event.to_owned());
    move |v| v["service"] == service && v["event"] == event
}

/// A free `127.0.0.1:PORT` for a host's HTTP endpoint.
///
/// # Panics
/// When no port can be had.
pub fn free_http() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

/// A minimal HTTP/1.1 client for the tests: (status, body).
///
/// # Panics
/// When the endpoint cannot be reached.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    http_with(method, addr, path, &headers, body)
}

/// [`http`] with headers of the caller's choosing.
///
/// # Panics
/// When the endpoint cannot be reached.
pub fn http_with(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    // Bodies may come chunked: keep what looks like the payload.
    (status, body)
}
