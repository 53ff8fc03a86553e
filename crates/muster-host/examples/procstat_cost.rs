//! What each `/proc` read of the host's monitor costs, per process, on
//! the processes named on the command line (or every process whose
//! command line names `muster-example-echo`): the figures behind
//! `procstat`'s choices (`docs/benchmarks.md`, "The idle host's
//! monitor"). Wall time of five passes, on an otherwise idle machine:
//!
//! ```sh
//! scripts/idle-cpu.sh host 1000 300 &    # holds 1,000 echo instances for a while
//! cargo run --release -p muster-host --example procstat_cost
//! ```

use std::collections::HashSet;
use std::time::Instant;

use muster_host::procstat::{self, CpuHistory, Round, SampleCache};

fn echo_pids() -> Vec<u32> {
    procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| {
            p.cmdline().is_ok_and(|c| {
                c.first()
                    .is_some_and(|a| a.ends_with("muster-example-echo"))
            })
        })
        .filter_map(|p| u32::try_from(p.pid()).ok())
        .collect()
}

fn per_process(name: &str, pids: &[u32], mut f: impl FnMut(u32)) {
    const PASSES: u32 = 5;
    let t = Instant::now();
    for _ in 0..PASSES {
        for &p in pids {
            f(p);
        }
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(PASSES) / pids.len() as f64;
    println!("{name:58} {us:7.1} µs");
}

fn main() {
    let mut pids: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if pids.is_empty() {
        pids = echo_pids();
    }
    if pids.is_empty() {
        eprintln!("no process to read: name pids, or start echo instances");
        std::process::exit(2);
    }
    println!("{} processes; per process:", pids.len());
    per_process("open /proc/PID, read stat and statm (procfs)", &pids, |p| {
        let process = procfs::process::Process::new(p as i32).unwrap();
        std::hint::black_box((process.stat().unwrap(), process.statm().unwrap()));
    });
    let mut cache = SampleCache::new(std::time::Duration::from_secs(3600));
    let mut cpu = CpuHistory::default();
    let mut seen = HashSet::new();
    let mut sample = |p: u32, round: &mut Round, cache: &mut SampleCache| {
        std::hint::black_box(procstat::sample(p, round, &mut cpu, cache, &mut seen, 0));
    };
    // The first pass opens the files and fills the cache.
    for &p in &pids {
        sample(p, &mut Round::slow(), &mut cache);
    }
    per_process("fast round: stat and statm held open, pread", &pids, |p| {
        sample(p, &mut Round::fast(), &mut cache);
    });
    per_process(
        "slow round, nothing changed: + descriptor count (statx)",
        &pids,
        |p| sample(p, &mut Round::slow(), &mut cache),
    );
    per_process("descriptors listed, each readlink'd (procfs)", &pids, |p| {
        let process = procfs::process::Process::new(p as i32).unwrap();
        std::hint::black_box(process.fd().unwrap().flatten().count());
    });
    per_process("memory maps listed and summed", &pids, |p| {
        std::hint::black_box(procstat::maps_summary(p));
    });
    per_process("children of every thread", &pids, |p| {
        std::hint::black_box(procstat::children(p));
    });
    let t = Instant::now();
    let table = procstat::SocketTable::read();
    std::hint::black_box(&table);
    println!(
        "{:58} {:7.1} ms",
        "the kernel's socket tables, once",
        t.elapsed().as_secs_f64() * 1e3
    );
}
