//! A fleet of three hosts, each in a network namespace of its own (the
//! test's own machines: a bridge, veth pairs, addresses of the test's
//! own; nothing leaves this machine), around a NATS server on the bridge:
//! `ctl status` from outside lists all three; calls keep being answered
//! while one host is killed with SIGKILL (a call in flight may fail, none
//! hangs); a host whose link is cut is shown lost by the others, and when
//! the link is back it rejoins with no registration twice.
//!
//! Run on NATS (a `nats-server` of the test's own on the bridge) and on
//! RabbitMQ (the machine's, reached from the bridge through a TCP relay in
//! the test, since it listens on loopback). Needs root (`ip netns`) and the
//! broker (`MUSTER_TEST_NATS`, `MUSTER_TEST_AMQP`): SKIPPED otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use muster::Client;
use muster_test::host::tempdir;
use muster_test::{Proc, broker_url, eventually, skipped};
use serde_json::{Value, json};

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

fn ip_ok(args: &[&str]) {
    let o = ip(args);
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The test's network: a bridge with `<net>.1`, and per host a namespace
/// with `<net>.<10+i>` on a veth pair. Removed when dropped.
struct Net {
    tag: String,
    net: String,
    hosts: usize,
}

impl Net {
    /// The network of test number `idx` of this process.
    fn up(hosts: usize, idx: u32) -> Self {
        let id = std::process::id();
        let tag = format!("mu{:x}{idx}", id & 0xfff);
        let net = format!("10.213.{}", (id * 2 + idx) % 250);
        let n = Self { tag, net, hosts };
        n.down();
        let br = n.bridge();
        ip_ok(&["link", "add", &br, "type", "bridge"]);
        ip_ok(&["addr", "add", &format!("{}.1/24", n.net), "dev", &br]);
        ip_ok(&["link", "set", &br, "up"]);
        for i in 0..hosts {
            let (ns, outer, inner) = (n.ns(i), n.outer(i), format!("{}i{i}", n.tag));
            ip_ok(&["netns", "add", &ns]);
            ip_ok(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip_ok(&["link", "set", &inner, "netns", &ns]);
            ip_ok(&["link", "set", &outer, "master", &br]);
            ip_ok(&["link", "set", &outer, "up"]);
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                ip_ok(&all);
            };
            exec(&["addr", "add", &n.addr(i), "dev", &inner]);
            exec(&["link", "set", &inner, "up"]);
            exec(&["link", "set", "lo", "up"]);
        }
        n
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }
    fn ns(&self, i: usize) -> String {
        format!("{}ns{i}", self.tag)
    }
    fn outer(&self, i: usize) -> String {
        format!("{}o{i}", self.tag)
    }
    fn addr(&self, i: usize) -> String {
        format!("{}.{}/24", self.net, 10 + i)
    }

    fn down(&self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.outer(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.down();
    }
}

/// True when this process may make a network namespace (root, `ip`);
/// `idx` keeps the probes of tests running side by side apart.
fn can_make_namespaces(idx: u32) -> bool {
    let probe = format!("mu{:x}probe{idx}", std::process::id() & 0xffff);
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let _ = ip(&["netns", "del", &probe]);
    }
    made
}

fn ctl(dir: &Path, bus: &str, args: &[&str]) -> Output {
    Command::new(MUSTER)
        .arg("ctl")
        .args(args)
        .args(["--bus", bus])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Each host's status (`ctl status --json`, an array for several).
fn statuses(dir: &Path, bus: &str) -> Vec<Value> {
    let o = ctl(dir, bus, &["status", "--json"]);
    match serde_json::from_slice::<Value>(&o.stdout) {
        Ok(Value::Array(a)) => a,
        Ok(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    }
}

fn peer_state(status: &Value, peer: &str) -> Option<String> {
    status["fleet"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer)
        .and_then(|p| p["state"].as_str())
        .map(str::to_owned)
}

/// Copies TCP between `listen` and `target` for every connection, until
/// the test ends: the machine's broker, reached from the bridge.
async fn relay(listen: String, target: String) {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("the relay binds");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_three_hosts_in_namespaces_fail_over_and_rejoin() {
    let test = "nats_three_hosts_in_namespaces_fail_over_and_rejoin";
    if broker_url("MUSTER_TEST_NATS", test).is_none() {
        return;
    }
    if !can_make_namespaces(0) {
        skipped(test, "network namespaces need root and `ip netns`");
        return;
    }
    let net = Net::up(3, 0);
    let dir = tempdir("netns-fleet-nats");
    // The broker on the bridge, reachable from every namespace; it notices
    // a silent client within seconds, not minutes.
    let port = muster_test::free_port_base();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"{}.1:{port}\"\nping_interval: \"1s\"\nping_max: 2\n",
            net.net
        ),
    )
    .unwrap();
    let mut c = Command::new("nats-server");
    c.arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _nats = Proc::spawn("nats-server on the bridge", c);
    let bus = format!("nats://{}.1:{port}?prefix=fleet", net.net);
    scenario(&net, &dir, &bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_three_hosts_in_namespaces_fail_over_and_rejoin() {
    let test = "amqp_three_hosts_in_namespaces_fail_over_and_rejoin";
    let Some(base) = broker_url("MUSTER_TEST_AMQP", test) else {
        return;
    };
    if !can_make_namespaces(1) {
        skipped(test, "network namespaces need root and `ip netns`");
        return;
    }
    let net = Net::up(3, 1);
    let dir = tempdir("netns-fleet-amqp");
    // amqp://USER:PASS@HOST:PORT/VHOST: HOST:PORT is relayed from the bridge.
    let (scheme_auth, rest) = base
        .split_once('@')
        .expect("amqp://USER:PASS@HOST:PORT/...");
    let (target, path) = rest.split_once('/').unwrap_or((rest, ""));
    let port = muster_test::free_port_base();
    let listen = format!("{}.1:{port}", net.net);
    relay(listen.clone(), target.to_owned()).await;
    let sep = if path.contains('?') { '&' } else { '?' };
    let bus = format!(
        "{scheme_auth}@{listen}/{path}{sep}exchange=fleet{:x}",
        muster::id::random_u64() & 0xff_ffff
    );
    scenario(&net, &dir, &bus).await;
}

/// Three hosts on `bus`, one per namespace of `net`: listed, a kill, a cut.
async fn scenario(net: &Net, dir: &Path, bus: &str) {
    let bus = bus.to_owned();
    eventually(Duration::from_secs(20), "the broker listens", || async {
        Client::connect(&bus).await.ok()
    })
    .await;

    // Three hosts, one per namespace, with one token.
    let mut hosts: Vec<(PathBuf, Proc)> = Vec::new();
    for i in 0..3 {
        let hdir = dir.join(format!("h{i}"));
        std::fs::create_dir_all(hdir.join(".muster")).unwrap();
        if i > 0 {
            std::fs::copy(dir.join("h0/.muster/token"), hdir.join(".muster/token")).unwrap();
        }
        std::fs::write(
            hdir.join("muster.toml"),
            format!(
                "[host]\nname = \"h{i}\"\nbus = \"{bus}\"\nhttp = \"off\"\n\n[context]\nname = \"shop\"\n\n[[service]]\nname = \"echo\"\nrun = [\"{MUSTER}\", \"__service\", \"echo\", \"--log-level\", \"warn\"]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(hdir.join("host.log")).unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &net.ns(i), MUSTER, "up", "muster.toml"])
            .current_dir(&hdir)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        hosts.push((hdir.clone(), Proc::spawn(&format!("host h{i}"), c)));
        if i == 0 {
            eventually(Duration::from_secs(30), "h0 made its token", || async {
                dir.join("h0/.muster/token").exists().then_some(())
            })
            .await;
        }
    }
    let here = hosts[0].0.clone();
    let all = eventually(
        Duration::from_secs(60),
        "three hosts, echo running on each",
        || async {
            let st = statuses(&here, &bus);
            let running = st
                .iter()
                .filter(|s| {
                    s["transactions"][0]["services"][0]["instances"][0]["state"] == "running"
                })
                .count();
            (st.len() == 3 && running == 3).then_some(st)
        },
    )
    .await;
    let names: Vec<&str> = all.iter().filter_map(|s| s["host"].as_str()).collect();
    assert_eq!(names, ["h0", "h1", "h2"]);

    // Calls from outside while h1 is killed: answered by the others; a
    // call in flight to h1 may fail, none hangs.
    let client = Client::connect(&bus).await.unwrap();
    let (answering, mut started) = tokio::sync::oneshot::channel::<()>();
    let caller = {
        let client = client.clone();
        let mut answering = Some(answering);
        tokio::spawn(async move {
            let (mut ok, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
            for n in 0..300 {
                let started = Instant::now();
                let r: Result<Value, _> = client
                    .call_with(
                        "echo.shout",
                        &json!({ "text": n.to_string() }),
                        muster::CallOptions::default().timeout(Duration::from_secs(2)),
                    )
                    .await;
                slowest = slowest.max(started.elapsed());
                if r.is_ok() {
                    ok += 1
                } else {
                    failed += 1
                }
                // The kill comes once calls are being answered.
                if ok == 20
                    && let Some(a) = answering.take()
                {
                    let _ = a.send(());
                }
                // Calls at a steady pace across the kill, not a burst.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed, slowest)
        })
    };
    (&mut started).await.expect("calls are being answered");
    hosts[1].1.kill9();
    let (ok, failed, slowest) = caller.await.unwrap();
    eprintln!("calls across the kill of h1: {ok} answered, {failed} failed, slowest {slowest:?}");
    assert!(
        failed <= 3,
        "{failed} calls failed beyond the ones in flight"
    );
    assert!(
        slowest <= Duration::from_secs(3),
        "a call hung: {slowest:?}"
    );
    let lost = eventually(Duration::from_secs(30), "h0 shows h1 lost", || async {
        let st = statuses(&here, &bus);
        let h0 = st.into_iter().find(|s| s["host"] == "h0")?;
        (peer_state(&h0, "h1").as_deref() == Some("lost")).then_some(h0)
    })
    .await;
    assert_eq!(peer_state(&lost, "h2").as_deref(), Some("up"));

    // h2's link cut and restored: shown lost, then up again, its
    // instance registered once.
    ip_ok(&["link", "set", &net.outer(2), "down"]);
    eventually(Duration::from_secs(30), "h0 shows h2 lost", || async {
        let st = statuses(&here, &bus);
        let h0 = st.into_iter().find(|s| s["host"] == "h0")?;
        (peer_state(&h0, "h2").as_deref() == Some("lost")).then_some(())
    })
    .await;
    ip_ok(&["link", "set", &net.outer(2), "up"]);
    eventually(
        Duration::from_secs(60),
        "h2 back: up, echo registered once",
        || async {
            let st = statuses(&here, &bus);
            let h0 = st.iter().find(|s| s["host"] == "h0")?;
            let echoes = client
                .instances()
                .await
                .ok()?
                .into_iter()
                .filter(|i| i.service == "echo")
                .count();
            (peer_state(h0, "h2").as_deref() == Some("up") && echoes == 2).then_some(())
        },
    )
    .await;
    let r: Value = client
        .call("echo.shout", &json!({"text": "after"}))
        .await
        .unwrap();
    assert_eq!(r["text"], "after");
    drop(hosts);
}
