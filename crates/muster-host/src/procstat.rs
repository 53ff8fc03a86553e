//! Process figures read from `/proc` (Linux): state, memory, CPU time,
//! threads, children, open files, network connections and memory maps.
//! Every read is allowed to fail (a process can end mid-sample): what
//! cannot be read is left at zero or empty, never a panic. The parsing is
//! the `procfs` crate's; this module decides what a sample holds and how
//! often its dearer parts are read.

use std::collections::{HashMap, HashSet};

use procfs::net::TcpState;
use procfs::process::{FDTarget, MMapPath, MemoryMap, Process};
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

/// Clock ticks per second, for CPU times.
fn ticks_per_second() -> f64 {
    procfs::ticks_per_second() as f64
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

    /// Reads `/proc/net/{tcp,tcp6,udp,udp6,unix}`; a table that cannot be
    /// read counts nothing.
    pub fn read() -> Self {
        let mut t = Self::default();
        for table in [procfs::net::tcp(), procfs::net::tcp6()]
            .into_iter()
            .flatten()
        {
            t.tcp.extend(
                table
                    .into_iter()
                    .map(|e| (e.inode, e.state == TcpState::Listen)),
            );
        }
        for table in [procfs::net::udp(), procfs::net::udp6()]
            .into_iter()
            .flatten()
        {
            t.udp.extend(table.into_iter().map(|e| e.inode));
        }
        if let Ok(table) = procfs::net::unix() {
            t.unix.extend(table.into_iter().map(|e| e.inode));
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
                    (ticks - t0) as f64 / ticks_per_second() / secs * 100.0
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
    /// How long a summary or child list is kept.
    pub every: std::time::Duration,
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

    fn children(&mut self, process: &Process) -> Vec<u32> {
        let now = std::time::Instant::now();
        let pid = pid_of(process);
        match self.children.get(&pid) {
            Some((at, c)) if now.duration_since(*at) < self.every => c.clone(),
            _ => {
                let c = children_of(process);
                self.children.insert(pid, (now, c.clone()));
                c
            }
        }
    }

    fn get(&mut self, process: &Process) -> MapsSummary {
        let now = std::time::Instant::now();
        let pid = pid_of(process);
        match self.by_pid.get(&pid) {
            Some((at, m)) if now.duration_since(*at) < self.every => m.clone(),
            _ => {
                let m = summarise(process);
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

fn open(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

fn pid_of(process: &Process) -> u32 {
    u32::try_from(process.pid()).unwrap_or(0)
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
    let process = open(pid)?;
    let stat = process.stat().ok()?;
    let ticks = stat.utime + stat.stime;
    seen.insert(pid);
    let mut s = ProcSample {
        pid,
        state: stat.state.to_string(),
        // `stat` counts resident pages with per-CPU caching; `status`
        // (and `statm`, read here) is the figure `ps` and users read.
        rss: resident(&process).unwrap_or(stat.rss * procfs::page_size()),
        vms: stat.vsize,
        cpu: cpu.percent(pid, ticks),
        cpu_secs: ticks as f64 / ticks_per_second(),
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        ..ProcSample::default()
    };
    // Open files and connections are counted on slow rounds only (an empty
    // socket table): listing descriptors is the dearest part of a sample.
    let fds = if sockets.is_empty() {
        None
    } else {
        process.fd().ok()
    };
    for fd in fds.into_iter().flatten() {
        // A descriptor closed while we list it is not counted.
        let Ok(fd) = fd else { continue };
        s.open_files += 1;
        let FDTarget::Socket(inode) = fd.target else {
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
    s.maps = maps.get(&process);
    if depth > 0 {
        s.children = maps
            .children(&process)
            .into_iter()
            .filter_map(|c| sample(c, sockets, cpu, maps, seen, depth - 1))
            .collect();
    }
    Some(s)
}

/// Resident memory of `pid`, bytes (`VmRSS` of `/proc/PID/status`).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    resident(&open(pid)?)
}

/// Resident bytes from `/proc/PID/statm`, which counts what `VmRSS` of
/// `status` counts (the same kernel counters, summed the same way) in one
/// short line. `Process::status` parses all fifty-odd lines of `status`
/// into a map: at 1,000 supervised instances sampled each second that
/// was 18% of the idle host's CPU (`docs/benchmarks.md`, "A thousand
/// instances on one host").
fn resident(process: &Process) -> Option<u64> {
    Some(process.statm().ok()?.resident * procfs::page_size())
}

/// Child process ids of `pid` (of all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    open(pid).map(|p| children_of(&p)).unwrap_or_default()
}

fn children_of(process: &Process) -> Vec<u32> {
    let Ok(tasks) = process.tasks() else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.children().ok())
        .flatten()
        .collect()
}

fn entry(m: &MemoryMap) -> MapEntry {
    let path = match &m.pathname {
        MMapPath::Path(p) => p.display().to_string(),
        MMapPath::Heap => "[heap]".into(),
        MMapPath::Stack => "[stack]".into(),
        MMapPath::TStack(tid) => format!("[stack:{tid}]"),
        MMapPath::Vdso => "[vdso]".into(),
        MMapPath::Vvar => "[vvar]".into(),
        MMapPath::Vsyscall => "[vsyscall]".into(),
        MMapPath::Anonymous => String::new(),
        MMapPath::Rollup => "[rollup]".into(),
        MMapPath::Vsys(key) => format!("/SYSV{key:08x}"),
        MMapPath::Other(o) => format!("[{o}]"),
    };
    MapEntry {
        start: format!("{:x}", m.address.0),
        size: m.address.1.saturating_sub(m.address.0),
        perms: m.perms.as_str(),
        path,
    }
}

fn summarise(process: &Process) -> MapsSummary {
    let mut m = MapsSummary::default();
    for e in process.maps().into_iter().flatten() {
        let size = e.address.1.saturating_sub(e.address.0);
        m.count += 1;
        m.size += size;
        if matches!(e.pathname, MMapPath::Path(_)) {
            m.file_backed += size;
        }
    }
    m
}

/// The memory maps of `pid`, summed.
pub fn maps_summary(pid: u32) -> MapsSummary {
    open(pid).map(|p| summarise(&p)).unwrap_or_default()
}

/// Every memory map of `pid` (the full list, asked for explicitly).
pub fn maps(pid: u32) -> Vec<MapEntry> {
    open(pid)
        .and_then(|p| p.maps().ok())
        .map(|maps| maps.iter().map(entry).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_kib(pid: u32, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
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
        let listed = maps(pid);
        let lines = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .lines()
            .count();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(listed.len(), lines);
        assert!(
            listed
                .iter()
                .any(|m| m.path.ends_with("/sleep") && m.perms.starts_with("r")),
            "{listed:?}"
        );
        assert!(listed.iter().any(|m| m.path == "[stack]"), "{listed:?}");
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
    fn listening_sockets_are_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = sample(
            std::process::id(),
            &SocketTable::read(),
            &mut CpuHistory::default(),
            &mut MapsCache::default(),
            &mut HashSet::new(),
            0,
        )
        .unwrap();
        drop(listener);
        assert!(s.connections.listening >= 1, "{:?}", s.connections);
        assert!(s.connections.tcp >= s.connections.listening);
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
