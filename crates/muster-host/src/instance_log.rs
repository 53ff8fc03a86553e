//! Instances' output: what an instance writes to stdout and stderr goes
//! through a pipe to the host, which appends it to the instance's log file
//! and rotates that file by size, keeping a number of older ones
//! (`[host] log_max_size`, `log_keep`; `docs/manifest.md`).
//!
//! The host reads the pipes as fast as the disk takes the bytes, so an
//! instance blocks on its writes only if the disk does. The writes are
//! plain file appends of what one read returned (at most 64 KiB), made on
//! the runtime's thread: a rotation renames files, and neither is worth a
//! blocking-pool hop per chunk.
//!
//! The rotation is written here rather than taken from `file-rotate`
//! (used until 2026-12-03): opening a file, that crate listed its
//! directory and looked at every entry, and all of a transaction's logs
//! share one directory. Starting 1,000 instances so made 500,000 `stat`
//! calls, 4.5% of the machine's CPU during the start (`perf record -a`,
//! docs/benchmarks.md). Here an open is one `open`, and a rotation
//! `keep` renames.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt};

/// When an instance's log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate once the file has grown past this many bytes (before the
    /// write after the one that crossed it, so a write is never split);
    /// `None`: never.
    pub max_bytes: Option<u64>,
    /// Rotated files kept besides the current one (`<file>.1` the newest).
    pub keep: usize,
}

/// One instance's log file, shared by its stdout and stderr.
#[derive(Clone)]
pub(crate) struct InstanceLog(Arc<Mutex<Rotating>>);

/// The open file, its size, and where its rotated copies go.
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: LogRotation,
}

impl InstanceLog {
    /// Opens (appending to) the log file at `path`, mode 0600.
    ///
    /// # Errors
    /// The file cannot be opened (for example with no descriptor left).
    pub(crate) fn open(path: &Path, rotation: LogRotation) -> std::io::Result<Self> {
        let file = append(path)?;
        let size = file.metadata()?.len();
        Ok(Self(Arc::new(Mutex::new(Rotating {
            path: path.to_owned(),
            file,
            size,
            rotation,
        }))))
    }

    /// Appends `bytes`; a write that fails (a full disk) is dropped with a
    /// warning rather than blocking the instance.
    pub(crate) fn write(&self, bytes: &[u8]) {
        let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = log.write(bytes) {
            tracing::warn!(error = %e, path = %log.path.display(), "cannot write an instance's output to its log");
        }
    }

    /// Copies `pipe` into the log until it closes (the instance ended).
    pub(crate) fn drain<R>(&self, mut pipe: R) -> tokio::task::JoinHandle<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let log = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => log.write(&buf[..n]),
                }
            }
        })
    }
}

impl Rotating {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // Past the limit: rotated before the next write, so the newest
        // output is always in `<file>`. A rotation that fails loses no
        // output: the file grows on, and the next try (and warning) comes
        // after another `max_bytes`.
        if self.rotation.max_bytes.is_some_and(|max| self.size > max)
            && let Err(e) = self.rotate()
        {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot rotate an instance's log; writing on");
            self.size = 0;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// `<file>.N-1` becomes `<file>.N` down to `<file>` becoming
    /// `<file>.1` (a rename replaces the oldest kept); then a new `<file>`.
    /// A file someone else removed meanwhile is not an error.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.rotation.keep;
        // Beyond `keep`: files left by a larger `log_keep` before.
        for n in keep + 1.. {
            if gone(std::fs::remove_file(self.rotated(n)))? {
                break;
            }
        }
        if keep == 0 {
            gone(std::fs::remove_file(&self.path))?;
        } else {
            for n in (1..keep).rev() {
                gone(std::fs::rename(self.rotated(n), self.rotated(n + 1)))?;
            }
            gone(std::fs::rename(&self.path, self.rotated(1)))?;
        }
        self.file = append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }
}

/// Whether a file operation found nothing to act on; other errors are
/// errors.
fn gone(result: std::io::Result<()>) -> std::io::Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// `path` opened to append, made with mode 0600 when new.
fn append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new directory of this test run's own.
    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "muster-instance-log-{}-{}",
            std::process::id(),
            muster_core::id::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn output_past_the_limit_rotates_and_keeps_n_files() {
        let dir = temp_dir();
        let path = dir.join("svc.0.log");
        let log = InstanceLog::open(
            &path,
            LogRotation {
                max_bytes: Some(1000),
                keep: 2,
            },
        )
        .unwrap();
        let (mut tx, rx) = tokio::io::duplex(4096);
        let task = log.drain(rx);
        for n in 0..500 {
            tokio::io::AsyncWriteExt::write_all(&mut tx, format!("line {n:04}\n").as_bytes())
                .await
                .unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["svc.0.log", "svc.0.log.1", "svc.0.log.2"]);
        for f in &files {
            let len = std::fs::metadata(dir.join(f)).unwrap().len();
            assert!(len <= 1000 + 4096, "{f}: {len} bytes");
        }
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.ends_with("line 0499\n"), "{newest}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    }

    /// An existing file is appended to and counted; files beyond a
    /// smaller `keep` than before go at the next rotation; with `keep = 0`
    /// a rotation leaves only the new file.
    #[test]
    fn a_log_opened_again_appends_and_rotation_keeps_only_keep() {
        let dir = temp_dir();
        let path = dir.join("svc.0.log");
        for n in 1..=4 {
            std::fs::write(dir.join(format!("svc.0.log.{n}")), format!("old {n}\n")).unwrap();
        }
        std::fs::write(&path, "0123456789").unwrap();
        let rotation = |max, keep| LogRotation {
            max_bytes: Some(max),
            keep,
        };
        // 10 bytes already there: 2 more are not past 12, 5 are, and the
        // write after those rotates first.
        let log = InstanceLog::open(&path, rotation(12, 2)).unwrap();
        log.write(b"ab");
        log.write(b"cde");
        assert_eq!(files_in(&dir).len(), 5, "nothing rotated yet");
        log.write(b"f");
        assert_eq!(files_in(&dir), ["svc.0.log", "svc.0.log.1", "svc.0.log.2"]);
        let rotated = std::fs::read_to_string(dir.join("svc.0.log.1")).unwrap();
        assert_eq!(rotated, "0123456789abcde");
        assert_eq!(
            std::fs::read_to_string(dir.join("svc.0.log.2")).unwrap(),
            "old 1\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "f");
        let log = InstanceLog::open(&path, rotation(3, 0)).unwrap();
        log.write(b"wxyz");
        log.write(b"!");
        assert_eq!(files_in(&dir), ["svc.0.log"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "!");
        // Removed by someone else: the next rotation opens it again.
        std::fs::remove_file(&path).unwrap();
        log.write(b"1234");
        log.write(b"5");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "5");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A rotation that fails (here `<file>.1` is a directory, which a
    /// rename cannot replace) loses no output.
    #[test]
    fn a_rotation_that_fails_loses_nothing() {
        let dir = temp_dir();
        let path = dir.join("svc.0.log");
        std::fs::create_dir_all(dir.join("svc.0.log.1/in-the-way")).unwrap();
        let log = InstanceLog::open(
            &path,
            LogRotation {
                max_bytes: Some(3),
                keep: 1,
            },
        )
        .unwrap();
        log.write(b"abcd");
        log.write(b"e");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abcde");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
