//! `muster-launch HOST_PID PROGRAM [ARGS...]`: what a host's children
//! start as. It asks the kernel to kill it when the host dies, restores
//! the open-file limit the host was started with, then becomes PROGRAM.
//!
//! `muster __exec` does the same; this binary exists because it starts
//! four times cheaper in CPU (it links nothing else: 127 page faults
//! against 863), which a host starting 1,000 instances feels. A host
//! uses it when it is installed beside `muster`.

fn main() -> std::process::ExitCode {
    muster_host::process::exec_child(std::env::args_os().skip(1).collect())
}
