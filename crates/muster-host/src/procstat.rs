//! Process figures read from `/proc` (Linux): state, memory, CPU time,
//! threads, children, open files, network connections and memory maps.
//! Every read is allowed to fail (a process can end mid-sample): what
//! cannot be read is left at zero or empty, never a panic. The parsing is
//! the `procfs` crate's; this module decides what a sample holds, which
//! files it keeps open and how often its dearer parts are read.
//!
//! Past 600 lines: the sampler and what it keeps between rounds are one
//! idea, and a third of the file is tests against the kernel's figures.

use std::collections::{HashMap, HashSet};

use std::fs::File;
use std::os::unix::fs::FileExt;

use procfs::FromRead;
use procfs::net::TcpState;
use procfs::process::{FDTarget, MMapPath, MemoryMap, Process, Stat, StatM};
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

/// Which figures one round of samples reads. Open files and connections
/// are counted on slow rounds only; the kernel's socket tables (tens of
/// milliseconds with a few thousand connections) are read at most once a
/// round, and only when some process's sockets must be told apart.
#[derive(Debug, Default)]
pub struct Round {
    slow: bool,
    sockets: Option<SocketTable>,
}

impl Round {
    /// CPU, memory, threads: open files and connections are not counted.
    pub fn fast() -> Self {
        Self::default()
    }

    /// Also open files and connections.
    pub fn slow() -> Self {
        Self {
            slow: true,
            sockets: None,
        }
    }

    fn sockets(&mut self) -> &SocketTable {
        self.sockets.get_or_insert_with(SocketTable::read)
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

/// `/proc/PID/stat` and `/proc/PID/statm` of one process, held open and
/// read again from offset 0 at each sample: one `pread` per file instead
/// of opening the directory and each file (about ten system calls). On
/// this VM that took a sample of 1,000 instances from 36-38 µs to 12-14
/// µs each (`docs/benchmarks.md`, "The idle host's monitor"). A file held
/// open stays bound to its process: once it ends, reads fail, never
/// answering for another process given the same pid.
#[derive(Debug)]
struct StatFiles {
    stat: File,
    statm: File,
}

impl StatFiles {
    fn open(pid: u32) -> std::io::Result<Self> {
        Ok(Self {
            stat: File::open(format!("/proc/{pid}/stat"))?,
            statm: File::open(format!("/proc/{pid}/statm"))?,
        })
    }

    fn read(&self, buf: &mut Vec<u8>) -> Option<(Stat, StatM)> {
        let stat = Stat::from_read(read_from_start(&self.stat, buf).ok()?).ok()?;
        let statm = StatM::from_read(read_from_start(&self.statm, buf).ok()?).ok()?;
        Some((stat, statm))
    }
}

/// The whole of a small `/proc` file, read from its start into `buf`.
fn read_from_start<'b>(file: &File, buf: &'b mut Vec<u8>) -> std::io::Result<&'b [u8]> {
    buf.resize(buf.capacity().max(1024), 0);
    let mut len = 0;
    loop {
        let n = file.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
        if len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    Ok(&buf[..len])
}

/// Connections of a process as last told apart, with the number of open
/// descriptors then.
#[derive(Debug, Clone)]
struct Classified {
    at: std::time::Instant,
    open_files: u64,
    connections: Connections,
}

/// What a sampler keeps between rounds: stat files held open, and the
/// dearer figures (memory-map summaries, child lists, connections) with
/// when they were read.
#[derive(Debug)]
pub struct SampleCache {
    /// How long a child list is kept; memory-map summaries and
    /// connections of a process whose descriptor count did not change
    /// are kept [`KEEP_DEAR_FIGURES`] times as long.
    pub every: std::time::Duration,
    by_pid: HashMap<u32, (std::time::Instant, MapsSummary)>,
    children: HashMap<u32, (std::time::Instant, Vec<u32>)>,
    connections: HashMap<u32, Classified>,
    files: HashMap<u32, StatFiles>,
    /// How many processes' stat files (two each) may be held open: an
    /// eighth of the soft limit on descriptors in all, so that instances'
    /// starts have the rest.
    files_budget: usize,
    buf: Vec<u8>,
}

/// How many times `every` memory-map summaries, and the connections of a
/// process whose descriptor count did not change, are kept. Listing a
/// process's memory maps costs about 90 µs, telling its sockets apart
/// about 170 µs (a `readlink` per descriptor) and the kernel's socket
/// tables tens of milliseconds; an idle process changes none of them.
pub const KEEP_DEAR_FIGURES: u32 = 5;

impl SampleCache {
    /// Child lists kept for `every`.
    pub fn new(every: std::time::Duration) -> Self {
        let budget = crate::fdlimit::soft().map_or(64, |s| s / 16);
        Self {
            every,
            by_pid: HashMap::new(),
            children: HashMap::new(),
            connections: HashMap::new(),
            files: HashMap::new(),
            files_budget: usize::try_from(budget).unwrap_or(usize::MAX),
            buf: Vec::new(),
        }
    }

    fn dear_every(&self) -> std::time::Duration {
        self.every * KEEP_DEAR_FIGURES
    }

    /// `stat` and `statm` of `pid`: through its files held open, opened
    /// again once should a read fail (the pid may belong to a new
    /// process, whose figures kept here are then not the old one's), and
    /// opened for this read only past the budget.
    fn stat(&mut self, pid: u32) -> Option<(Stat, StatM)> {
        if let Some(kept) = self.files.get(&pid) {
            if let Some(r) = kept.read(&mut self.buf) {
                return Some(r);
            }
            self.files.remove(&pid);
            self.by_pid.remove(&pid);
            self.children.remove(&pid);
            self.connections.remove(&pid);
        }
        let files = StatFiles::open(pid).ok()?;
        let r = files.read(&mut self.buf)?;
        if self.files.len() < self.files_budget {
            self.files.insert(pid, files);
        }
        Some(r)
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

    fn maps(&mut self, pid: u32) -> MapsSummary {
        let now = std::time::Instant::now();
        match self.by_pid.get(&pid) {
            Some((at, m)) if now.duration_since(*at) < self.dear_every() => m.clone(),
            _ => {
                let m = maps_summary(pid);
                self.by_pid.insert(pid, (now, m.clone()));
                m
            }
        }
    }

    /// Open descriptors and connections of `pid`, on a slow round. The
    /// count comes from the size of `/proc/PID/fd` (one `statx`; Linux
    /// 6.2 and later); while it stays the same the sockets are not told
    /// apart again, up to [`KEEP_DEAR_FIGURES`] times `every`.
    fn connections(&mut self, pid: u32, round: &mut Round) -> (u64, Connections) {
        let now = std::time::Instant::now();
        let count = descriptor_count(pid);
        if let Some(c) = self.connections.get(&pid)
            && count == Some(c.open_files)
            && now.duration_since(c.at) < self.dear_every()
        {
            return (c.open_files, c.connections.clone());
        }
        let (listed, connections) = classify(pid, round.sockets());
        // Counted from the listing: the two may differ by a descriptor
        // opened in between; the next round compares with this one.
        self.connections.insert(
            pid,
            Classified {
                at: now,
                open_files: listed,
                connections: connections.clone(),
            },
        );
        (listed, connections)
    }

    /// Forgets processes not seen in the last sample (and closes their
    /// files).
    pub fn retain(&mut self, seen: &HashSet<u32>) {
        self.by_pid.retain(|pid, _| seen.contains(pid));
        self.children.retain(|pid, _| seen.contains(pid));
        self.connections.retain(|pid, _| seen.contains(pid));
        self.files.retain(|pid, _| seen.contains(pid));
    }
}

impl Default for SampleCache {
    fn default() -> Self {
        Self::new(std::time::Duration::ZERO)
    }
}

fn open(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// Open descriptors of `pid` from the size of `/proc/PID/fd`: one
/// `statx`, where the kernel gives the count there (Linux 6.2 and later;
/// `None` before, where the size is 0).
pub fn descriptor_count(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/fd"))
        .ok()
        .map(|m| m.len())
        .filter(|n| *n > 0)
}

/// Open descriptors of `pid`, and its sockets by kind.
fn classify(pid: u32, sockets: &SocketTable) -> (u64, Connections) {
    let mut open_files = 0;
    let mut c = Connections::default();
    let fds = open(pid).and_then(|p| p.fd().ok());
    for fd in fds.into_iter().flatten() {
        // A descriptor closed while we list it is not counted.
        let Ok(fd) = fd else { continue };
        open_files += 1;
        let FDTarget::Socket(inode) = fd.target else {
            continue;
        };
        if let Some(listening) = sockets.tcp.get(&inode) {
            c.tcp += 1;
            c.listening += u64::from(*listening);
        } else if sockets.udp.contains(&inode) {
            c.udp += 1;
        } else if sockets.unix.contains(&inode) {
            c.unix += 1;
        }
    }
    (open_files, c)
}

/// Samples `pid` and its children (to `depth` levels). `None` when the
/// process is gone.
pub fn sample(
    pid: u32,
    round: &mut Round,
    cpu: &mut CpuHistory,
    cache: &mut SampleCache,
    seen: &mut HashSet<u32>,
    depth: u32,
) -> Option<ProcSample> {
    let (stat, statm) = cache.stat(pid)?;
    let ticks = stat.utime + stat.stime;
    seen.insert(pid);
    let mut s = ProcSample {
        pid,
        state: stat.state.to_string(),
        // `stat` counts resident pages with per-CPU caching; `statm` (as
        // `status`) is the figure `ps` and users read.
        rss: statm.resident * procfs::page_size(),
        vms: stat.vsize,
        cpu: cpu.percent(pid, ticks),
        cpu_secs: ticks as f64 / ticks_per_second(),
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        ..ProcSample::default()
    };
    if round.slow {
        (s.open_files, s.connections) = cache.connections(pid, round);
    } else if let Some(c) = cache.connections.get(&pid) {
        // As counted on the last slow round.
        (s.open_files, s.connections) = (c.open_files, c.connections.clone());
    }
    s.maps = cache.maps(pid);
    if depth > 0 {
        s.children = cache
            .children(pid)
            .into_iter()
            .filter_map(|c| sample(c, round, cpu, cache, seen, depth - 1))
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
    let Some(Ok(tasks)) = open(pid).map(|p| p.tasks()) else {
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
            &mut Round::slow(),
            &mut cpu,
            &mut SampleCache::default(),
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
            &mut Round::slow(),
            &mut cpu,
            &mut SampleCache::default(),
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
            &mut Round::slow(),
            &mut CpuHistory::default(),
            &mut SampleCache::default(),
            &mut HashSet::new(),
            0,
        )
        .unwrap();
        drop(listener);
        assert!(s.connections.listening >= 1, "{:?}", s.connections);
        assert!(s.connections.tcp >= s.connections.listening);
    }

    #[test]
    fn a_new_socket_is_counted_at_the_next_slow_round() {
        let mut cache = SampleCache::new(std::time::Duration::from_secs(60));
        let mut cpu = CpuHistory::default();
        let mut take = |cache: &mut SampleCache, mut round: Round| {
            sample(
                std::process::id(),
                &mut round,
                &mut cpu,
                cache,
                &mut HashSet::new(),
                0,
            )
            .unwrap()
        };
        let before = take(&mut cache, Round::slow());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let after = take(&mut cache, Round::slow());
        let fast = take(&mut cache, Round::fast());
        drop(listener);
        assert_eq!(
            fast.connections, after.connections,
            "a fast round repeats the last slow round's count"
        );
        assert!(
            after.connections.listening > before.connections.listening,
            "{:?} then {:?}",
            before.connections,
            after.connections
        );
    }

    #[test]
    fn an_ended_process_is_not_read_through_its_kept_files() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut cache = SampleCache::default();
        let mut cpu = CpuHistory::default();
        let mut take = |cache: &mut SampleCache| {
            sample(
                pid,
                &mut Round::fast(),
                &mut cpu,
                cache,
                &mut HashSet::new(),
                0,
            )
        };
        assert!(take(&mut cache).is_some());
        assert!(cache.files.contains_key(&pid), "its stat files are kept");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(take(&mut cache).is_none());
        assert!(!cache.files.contains_key(&pid));
        assert!(
            !cache.by_pid.contains_key(&pid),
            "nothing of it is kept for a process that may get its pid"
        );
    }

    #[test]
    fn a_gone_process_is_none() {
        assert!(
            sample(
                u32::MAX - 1,
                &mut Round::fast(),
                &mut CpuHistory::default(),
                &mut SampleCache::default(),
                &mut HashSet::new(),
                0
            )
            .is_none()
        );
    }
}
