//! The limit on open files. A host holds about eight descriptors per
//! instance (the two output pipes, the log file, the pidfd, its share of
//! the bus's connections), so the usual soft limit of 1,024 ends a host
//! near 120 instances. The hard limit is what the administrator allows;
//! like Go's runtime and most servers, a host and a bare bus raise their
//! soft limit to it when they start.
//!
//! Instances get the limit the host was started with, not the raised
//! one: programs that still use `select(2)` break on descriptors past
//! 1,023. The launcher (`muster-launch`, or `muster __exec`) puts it
//! back before it becomes the program ([`restore_for_child`]); a host
//! embedded without a launcher (`HostOptions::launcher` unset) passes
//! the raised limit on.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Carries the soft limit the host was started with to the launcher,
/// which restores it and removes the variable.
pub const STARTED_WITH_ENV: &str = "MUSTER_NOFILE_SOFT";

/// The soft limit before [`raise`] raised it (`None` when it did not);
/// set once, by the first call.
static STARTED_WITH: OnceLock<Option<u64>> = OnceLock::new();

/// Raises this process's soft limit on open files to its hard limit,
/// once; later calls do nothing. A refusal is logged, not an error: the
/// host then runs with the limit it has.
pub fn raise() {
    STARTED_WITH.get_or_init(|| {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft >= hard {
            return None;
        }
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "open-file limit raised");
                Some(soft)
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                None
            }
        }
    });
}

/// The soft limit to give a child: the one this process started with,
/// when [`raise`] changed it.
pub fn started_with() -> Option<u64> {
    STARTED_WITH.get().copied().flatten()
}

/// This process's soft limit on open files now.
pub fn soft() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// In the launcher: puts back the soft limit named by
/// [`STARTED_WITH_ENV`] (never above the hard limit). A value that does
/// not parse is ignored: the child then keeps the raised limit.
pub fn restore_for_child(value: Option<&std::ffi::OsStr>) {
    let Some(soft) = value.and_then(|v| v.to_str()?.parse::<u64>().ok()) else {
        return;
    };
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard);
    }
}

/// Descriptors an instance costs the host, at most about: its two output
/// pipes, its log file, its pidfd, and the bus's side of its connections
/// when the bus is embedded.
const PER_INSTANCE: u64 = 8;

/// Descriptors kept free for the host's own work whatever the instances
/// take: `muster ctl` and HTTP connections, the state files, the monitor.
const RESERVE: u64 = 64;

/// Too few descriptors left to start another instance.
#[derive(Debug, thiserror::Error)]
#[error(
    "too few file descriptors left for another instance: {open} open of a limit of {limit} \
     (an instance needs about {PER_INSTANCE}, and {RESERVE} are kept for the host); \
     raise the hard limit (`ulimit -Hn`, systemd's LimitNOFILE)"
)]
pub struct TooFewDescriptors {
    /// Descriptors this process has open.
    pub open: u64,
    /// Its soft limit.
    pub limit: u64,
}

/// Whether another instance fits under the limit, with the reserve
/// still free. A host out of descriptors fails the start with this
/// error instead of failing its own work.
///
/// # Errors
/// [`TooFewDescriptors`].
pub fn room_for_instance() -> Result<(), TooFewDescriptors> {
    let (Some(limit), Some(open)) = (soft(), open_descriptors()) else {
        return Ok(());
    };
    if open + PER_INSTANCE + RESERVE > limit {
        return Err(TooFewDescriptors { open, limit });
    }
    Ok(())
}

/// Descriptors this process has open: from the size of `/proc/self/fd`
/// where the kernel gives it, else a listing of it.
fn open_descriptors() -> Option<u64> {
    crate::procstat::descriptor_count(std::process::id()).or_else(|| {
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_remembers_the_start() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        raise();
        assert_eq!(soft(), Some(hard));
        raise();
        assert_eq!(soft(), Some(hard), "a second call changes nothing");
        assert!(
            started_with().is_none_or(|s| s < hard),
            "{:?}",
            started_with()
        );
    }

    #[test]
    fn open_descriptors_are_counted() {
        let before = open_descriptors().unwrap();
        let files: Vec<_> = (0..20)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        // Other tests of this binary open and close files meanwhile.
        let during = open_descriptors().unwrap();
        assert!(during >= 20, "{before} then {during}");
        drop(files);
    }
}
