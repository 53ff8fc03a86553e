//! The fleet's own cost: three hosts joined to one bus, with N idle
//! instances in all, for several N. What the bus reads and writes per
//! second (registrations, heartbeats, the hosts' listings and monitor
//! samples), and the CPU of the bus, of each host and of the instances.
//! The baseline is the smallest fleet of the same run: each figure's
//! growth is printed beside the growth of N, which it must track
//! (linear), not outrun (quadratic).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use muster::Client;
use muster_host::procstat;
use tokio::process::{Child, Command};

use super::{exe, free_ports};

/// Hosts in the fleet.
const HOSTS: u32 = 3;

/// What one fleet cost while idle.
#[derive(Debug, Clone, Copy)]
struct Cost {
    instances: u32,
    bus_bytes_per_sec: f64,
    bus_cpu: f64,
    host_cpu: [f64; HOSTS as usize],
    instances_cpu: f64,
}

/// CPU ticks of one process so far.
fn ticks(pid: u32) -> u64 {
    procfs::process::Process::new(i32::try_from(pid).unwrap_or(0))
        .and_then(|p| p.stat())
        .map_or(0, |s| s.utime + s.stime)
}

/// Relays the bus's three ports (`to`, +1, +2) from `from` (+1, +2),
/// counting the bytes both ways: what the fleet sends over the network.
/// (The kernel's per-process I/O counters miss `send`/`recv` on sockets.)
async fn counting_relay(from: u16, to: u16, bytes: Arc<AtomicU64>) -> anyhow::Result<()> {
    for i in 0..3 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", from + i)).await?;
        let bytes = bytes.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to + i)).await
                else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(copy_counting(ri, wo, bytes.clone()));
                tokio::spawn(copy_counting(ro, wi, bytes.clone()));
            }
        });
    }
    Ok(())
}

async fn copy_counting(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

fn cpu_percent(ticks: u64, window: Duration) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64 / window.as_secs_f64() * 100.0
}

/// The fleet at each size of `sizes` (rounded to a multiple of three).
pub(super) async fn run(sizes: &[u32], idle_for: Duration) -> anyhow::Result<()> {
    let mut costs = Vec::new();
    for &n in sizes {
        let per_host = (n / HOSTS).max(1);
        let cost = measure(per_host, idle_for).await?;
        println!(
            "fleet {:>5} instances: bus {:>9.0} B/s ({:.1} B/s per instance), bus CPU {:.2}%, hosts CPU {:.2}% {:.2}% {:.2}%, instances CPU {:.2}% in all",
            cost.instances,
            cost.bus_bytes_per_sec,
            cost.bus_bytes_per_sec / f64::from(cost.instances),
            cost.bus_cpu,
            cost.host_cpu[0],
            cost.host_cpu[1],
            cost.host_cpu[2],
            cost.instances_cpu,
        );
        costs.push(cost);
    }
    if let (Some(first), Some(last)) = (costs.first(), costs.last())
        && costs.len() > 1
    {
        let growth = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
        let hosts = |c: &Cost| c.host_cpu.iter().sum::<f64>();
        println!(
            "growth {} -> {} instances (x{:.1}): bus bytes x{:.1}, bus CPU x{:.1}, hosts CPU x{:.1}, instances CPU x{:.1} (linear: the same as the instances; quadratic: x{:.0})",
            first.instances,
            last.instances,
            growth(f64::from(first.instances), f64::from(last.instances)),
            growth(first.bus_bytes_per_sec, last.bus_bytes_per_sec),
            growth(first.bus_cpu, last.bus_cpu),
            growth(hosts(first), hosts(last)),
            growth(first.instances_cpu, last.instances_cpu),
            growth(f64::from(first.instances), f64::from(last.instances)).powi(2),
        );
    }
    Ok(())
}

/// One fleet: a `muster bus`, three hosts joined to it with `per_host`
/// echo instances each; measured once every instance is registered.
async fn measure(per_host: u32, idle_for: Duration) -> anyhow::Result<Cost> {
    let port = free_ports()?;
    let relayed = free_ports()?;
    let bytes = Arc::new(AtomicU64::new(0));
    counting_relay(relayed, port, bytes.clone()).await?;
    let listen = format!("zmq://127.0.0.1:{port}");
    // Everyone reaches the bus through the relay.
    let url = format!("zmq://127.0.0.1:{relayed}");
    let root = std::env::temp_dir().join(format!(
        "muster-bench-fleet-{}-{per_host}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let mut bus = Command::new(exe()?)
        .args([
            "bus",
            "--open",
            "--queue-store",
            "memory",
            "--listen",
            &listen,
        ])
        .arg("--state-dir")
        .arg(root.join("bus"))
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start muster bus")?;
    let (program, args) = super::host::echo_program()?;
    let mut run = vec![program.to_string_lossy().into_owned()];
    run.extend(args);
    run.extend(["--log-level".into(), "warn".into()]);
    let mut hosts: Vec<(Child, PathBuf)> = Vec::new();
    for h in 0..HOSTS {
        let dir = root.join(format!("h{h}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("muster.toml"),
            format!(
                "[host]\nname = \"h{h}\"\nbus = \"{url}\"\nown_bus = false\nhttp = \"off\"\n\n[context]\nname = \"bench\"\nmax_restarts = 1000\n\n[[service]]\nname = \"echo\"\nrun = {}\ninstances = {per_host}\n",
                serde_json::to_string(&run)?
            ),
        )?;
        hosts.push((super::host::spawn_up(&dir)?, dir));
    }
    let client = Client::connect(&url).await?;
    let want = per_host * HOSTS;
    super::host::until_registered(&client, "echo", want as usize, Duration::from_secs(600)).await?;
    drop(client);
    // Let the start settle: the last processes' first samples, the hosts'
    // first listings of everyone.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let bus_pid = bus.id().unwrap_or(0);
    let host_pids: Vec<u32> = hosts.iter().map(|(c, _)| c.id().unwrap_or(0)).collect();
    let instance_pids: Vec<u32> = host_pids
        .iter()
        .flat_map(|h| procstat::children(*h))
        .collect();
    let before_bus = ticks(bus_pid);
    let before_bytes = bytes.load(Ordering::Relaxed);
    let before_hosts: Vec<u64> = host_pids.iter().map(|p| ticks(*p)).collect();
    let before_instances: u64 = instance_pids.iter().map(|p| ticks(*p)).sum();
    let started = Instant::now();
    tokio::time::sleep(idle_for).await;
    let window = started.elapsed();
    let bus_bytes = bytes.load(Ordering::Relaxed) - before_bytes;
    let bus_ticks = ticks(bus_pid).saturating_sub(before_bus);
    let mut host_cpu = [0.0; HOSTS as usize];
    for (i, p) in host_pids.iter().enumerate() {
        host_cpu[i] = cpu_percent(ticks(*p).saturating_sub(before_hosts[i]), window);
    }
    let after_instances: u64 = instance_pids.iter().map(|p| ticks(*p)).sum();
    let cost = Cost {
        instances: want,
        bus_bytes_per_sec: bus_bytes as f64 / window.as_secs_f64(),
        bus_cpu: cpu_percent(bus_ticks, window),
        host_cpu,
        instances_cpu: cpu_percent(after_instances.saturating_sub(before_instances), window),
    };

    for (mut child, _) in hosts {
        super::host::terminate(&mut child, Duration::from_secs(60)).await;
    }
    let _ = bus.kill().await;
    let _ = std::fs::remove_dir_all(&root);
    Ok(cost)
}
