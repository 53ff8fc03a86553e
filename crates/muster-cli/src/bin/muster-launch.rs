//! `muster-launch HOST_PID PROGRAM [ARGS...]`: what a host's children
//! start as. It asks the kernel to kill it when the host dies, restores
//! the open-file limit the host was started with, then becomes PROGRAM.
//!
//! `muster __exec` does the same; this binary exists because its own
//! start costs about a third of the CPU (it links nothing else: about
//! 125 page faults against 870; docs/benchmarks.md, "The small
//! launcher"), which a host starting 1,000 instances feels. A host uses
//! it when it is installed beside `muster`.

fn main() -> std::process::ExitCode {
    muster_host::process::exec_child(std::env::args_os().skip(1).collect())
}
