//! Process figures read from `/proc` (Linux): state, memory, CPU time,
//! threads, children, open files, network connections and memory maps.
//! Every read is allowed to fail (a process can end mid-sample): what
//! cannot be read is left at zero or empty, never a panic.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One process, as sampled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProcSample {
    /// Process id.
    pub pid: u32,
    /// One letter, as in `ps`: R running, S sleeping, D disk wait, Z zombie, T stopped.
    pub state: String,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Virtual memory, bytes.
    pub vms: u64,
    /// CPU % of one core since the previous sample (0 on the first).
    pub cpu: f64,
    /// User + system CPU time so far, seconds.
    pub cpu_secs: f64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub open_files: u64,
    /// TCP and UDP sockets (IPv4 and IPv6) and Unix sockets it holds.
    pub connections: Connections,
    /// Memory maps: how many, and their total size.
    pub maps: MapsSummary,
    /// Child processes (their own figures, recursively).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ProcSample>,
}

/// Socket counts of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Connections {
    /// TCP sockets (any state).
    pub tcp: u64,
    /// TCP sockets listening.
    pub listening: u64,
    /// UDP sockets.
    pub udp: u64,
    /// Unix sockets.
    pub unix: u64,
}

/// Memory maps of a process, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MapsSummary {
    /// Mappings.
    pub count: u64,
    /// Their total size, bytes.
    pub size: u64,
    /// Of which mapped from files.
    pub file_backed: u64,
}

/// One memory map (the full list, on request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MapEntry {
    /// Start address, hex.
    pub start: String,
    /// Size, bytes.
    pub size: u64,
    /// Permissions, as in `/proc/PID/maps`.
    pub perms: String,
    /// The file or `[heap]`, `[stack]`...
    pub path: String,
}

/// Bytes per page and clock ticks per second for `/proc` figures.
const PAGE: u64 = 4096;
const TICKS: f64 = 100.0;

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Kernel socket inodes by kind, read once per sample.
#[derive(Debug, Default)]
pub struct SocketTable {
    tcp: HashMap<u64, bool>,
    udp: HashSet<u64>,
    unix: HashSet<u64>,
}

impl SocketTable {
    /// True when nothing was read (connections are then not counted).
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && self.unix.is_empty()
    }

    /// Reads `/proc/net/{tcp,tcp6,udp,udp6,unix}`.
    pub fn read() -> Self {
        let mut t = Self::default();
        for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in read(f).unwrap_or_default().lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if let (Some(st), Some(inode)) =
                    (cols.get(3), cols.get(9).and_then(|i| i.parse().ok()))
                {
                    t.tcp.insert(inode, *st == "0A");
                }
            }
        }
        for f in ["/proc/net/udp", "/proc/net/udp6"] {
            for line in read(f).unwrap_or_default().lines().skip(1) {
                if let Some(inode) = line.split_whitespace().nth(9).and_then(|i| i.parse().ok()) {
                    t.udp.insert(inode);
                }
            }
        }
        for line in read("/proc/net/unix").unwrap_or_default().lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(6).and_then(|i| i.parse().ok()) {
                t.unix.insert(inode);
            }
        }
        t
    }
}

/// CPU ticks seen at the previous sample, to turn time into a percentage.
#[derive(Debug, Default)]
pub struct CpuHistory {
    last: HashMap<u32, (u64, std::time::Instant)>,
}

impl CpuHistory {
    fn percent(&mut self, pid: u32, ticks: u64) -> f64 {
        let now = std::time::Instant::now();
        let pct = match self.last.get(&pid) {
            Some((t0, at)) if ticks >= *t0 => {
                let secs = now.duration_since(*at).as_secs_f64();
                if secs > 0.0 {
                    (ticks - t0) as f64 / TICKS / secs * 100.0
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last.insert(pid, (ticks, now));
        pct
    }

    /// Forgets processes not seen in the last sample.
    pub fn retain(&mut self, seen: &HashSet<u32>) {
        self.last.retain(|pid, _| seen.contains(pid));
    }
}

/// Memory-map summaries and child lists, re-read at most every `every`
/// per process: they change rarely, and reading them costs more than the
/// rest of a sample.
#[derive(Debug)]
pub struct MapsCache {
    every: std::time::Duration,
    by_pid: HashMap<u32, (std::time::Instant, MapsSummary)>,
    children: HashMap<u32, (std::time::Instant, Vec<u32>)>,
}

impl MapsCache {
    /// Summaries kept for `every`.
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            by_pid: HashMap::new(),
            children: HashMap::new(),
        }
    }

    fn children(&mut self, pid: u32) -> Vec<u32> {
        let now = std::time::Instant::now();
        match self.children.get(&pid) {
            Some((at, c)) if now.duration_since(*at) < self.every => c.clone(),
            _ => {
                let c = children(pid);
                self.children.insert(pid, (now, c.clone()));
                c
            }
        }
    }

    fn get(&mut self, pid: u32) -> MapsSummary {
        let now = std::time::Instant::now();
        match self.by_pid.get(&pid) {
            Some((at, m)) if now.duration_since(*at) < self.every => m.clone(),
            _ => {
                let m = maps_summary(pid);
                self.by_pid.insert(pid, (now, m.clone()));
                m
            }
        }
    }

    /// Forgets processes not seen in the last sample.
    pub fn retain(&mut self, seen: &HashSet<u32>) {
        self.by_pid.retain(|pid, _| seen.contains(pid));
        self.children.retain(|pid, _| seen.contains(pid));
    }
}

impl Default for MapsCache {
    fn default() -> Self {
        Self::new(std::time::Duration::ZERO)
    }
}

/// Samples `pid` and its children (to `depth` levels). `None` when the
/// process is gone.
pub fn sample(
    pid: u32,
    sockets: &SocketTable,
    cpu: &mut CpuHistory,
    maps: &mut MapsCache,
    seen: &mut HashSet<u32>,
    depth: u32,
) -> Option<ProcSample> {
    let dir = format!("/proc/{pid}");
    let stat = read(format!("{dir}/stat"))?;
    // Fields after the command name, which may hold spaces and parentheses.
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ticks = num(11) + num(12);
    seen.insert(pid);
    let mut s = ProcSample {
        pid,
        state: f.first().copied().unwrap_or("?").to_owned(),
        // `stat` counts resident pages with per-CPU caching; `status` is
        // the figure `ps` and users read: take memory from there.
        rss: status_bytes(&dir, "VmRSS:").unwrap_or(num(21) * PAGE),
        vms: num(20),
        cpu: cpu.percent(pid, ticks),
        cpu_secs: ticks as f64 / TICKS,
        threads: num(17),
        ..ProcSample::default()
    };
    // Open files and connections are counted on slow rounds only (an empty
    // socket table): listing descriptors is the dearest part of a sample.
    let fds = if sockets.is_empty() {
        None
    } else {
        std::fs::read_dir(format!("{dir}/fd")).ok()
    };
    if let Some(fds) = fds {
        for fd in fds.flatten() {
            s.open_files += 1;
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(listening) = sockets.tcp.get(&inode) {
                s.connections.tcp += 1;
                s.connections.listening += u64::from(*listening);
            } else if sockets.udp.contains(&inode) {
                s.connections.udp += 1;
            } else if sockets.unix.contains(&inode) {
                s.connections.unix += 1;
            }
        }
    }
    s.maps = maps.get(pid);
    if depth > 0 {
        s.children = maps
            .children(pid)
            .into_iter()
            .filter_map(|c| sample(c, sockets, cpu, maps, seen, depth - 1))
            .collect();
    }
    Some(s)
}

/// Resident memory of `pid`, bytes (`VmRSS` of `/proc/PID/status`).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    status_bytes(&format!("/proc/{pid}"), "VmRSS:")
}

/// A `kB` figure of `/proc/PID/status`, in bytes.
fn status_bytes(dir: &str, key: &str) -> Option<u64> {
    read(format!("{dir}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Child process ids of `pid` (of all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Some(list) = read(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn parse_map(line: &str) -> Option<MapEntry> {
    let mut cols = line.split_whitespace();
    let range = cols.next()?;
    let perms = cols.next()?.to_owned();
    let path = cols.nth(3).unwrap_or("").to_owned();
    let (a, b) = range.split_once('-')?;
    let start = u64::from_str_radix(a, 16).ok()?;
    let end = u64::from_str_radix(b, 16).ok()?;
    Some(MapEntry {
        start: a.to_owned(),
        size: end.saturating_sub(start),
        perms,
        path,
    })
}

/// The memory maps of `pid`, summed.
pub fn maps_summary(pid: u32) -> MapsSummary {
    let mut m = MapsSummary::default();
    for e in read(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(parse_map)
    {
        m.count += 1;
        m.size += e.size;
        if e.path.starts_with('/') {
            m.file_backed += e.size;
        }
    }
    m
}

/// Every memory map of `pid` (the full list, asked for explicitly).
pub fn maps(pid: u32) -> Vec<MapEntry> {
    read(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(parse_map)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_kib(pid: u32, key: &str) -> u64 {
        read(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn figures_match_the_kernels_own() {
        // A quiet process of our own (this test process has other tests'
        // threads allocating while it reads).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut cpu = CpuHistory::default();
        let s = sample(
            pid,
            &SocketTable::read(),
            &mut cpu,
            &mut MapsCache::default(),
            &mut HashSet::new(),
            1,
        )
        .unwrap();
        let rss = status_kib(pid, "VmRSS:") * 1024;
        let vms = status_kib(pid, "VmSize:") * 1024;
        let threads = status_kib(pid, "Threads:");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(s.rss, rss);
        assert_eq!(s.vms, vms);
        assert_eq!(s.threads, threads);
        assert_eq!(s.open_files, fds);
        assert!(s.maps.count > 5 && s.maps.size > 0 && s.maps.file_backed > 0);
        assert_eq!(s.state, "S");
        let own = sample(
            std::process::id(),
            &SocketTable::read(),
            &mut cpu,
            &mut MapsCache::default(),
            &mut HashSet::new(),
            1,
        )
        .unwrap();
        assert!(own.children.is_empty(), "the sleep was reaped");
    }

    #[test]
    fn a_gone_process_is_none() {
        assert!(
            sample(
                u32::MAX - 1,
                &SocketTable::default(),
                &mut CpuHistory::default(),
                &mut MapsCache::default(),
                &mut HashSet::new(),
                0
            )
            .is_none()
        );
    }
}
