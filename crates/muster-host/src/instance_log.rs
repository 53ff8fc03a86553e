//! Instances' output: what an instance writes to stdout and stderr goes
//! through a pipe to the host, which appends it to the instance's log file
//! and rotates that file by size, keeping a number of older ones
//! (`[host] log_max_size`, `log_keep`; `docs/manifest.md`).
//!
//! The host reads the pipes as fast as the disk takes the bytes, so an
//! instance blocks on its writes only if the disk does. The writes are
//! plain file appends of what one read returned (at most 64 KiB), made on
//! the runtime's thread: a rotation renames files, and neither is worth a
//! blocking-pool hop per chunk. `file-rotate` does the renaming and the
//! counting.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tokio::io::{AsyncRead, AsyncReadExt};

/// When an instance's log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate once the file has grown past this many bytes (after the
    /// write that crossed it, so a write is never split); `None`: never.
    pub max_bytes: Option<u64>,
    /// Rotated files kept besides the current one (`<file>.1` the newest).
    pub keep: usize,
}

/// One instance's log file, shared by its stdout and stderr.
#[derive(Clone)]
pub(crate) struct InstanceLog(Arc<Mutex<FileRotate<AppendCount>>>);

impl InstanceLog {
    /// Opens (appending to) the log file at `path`, mode 0600.
    ///
    /// # Errors
    /// The file cannot be opened or its directory read (for example with
    /// no descriptor left).
    pub(crate) fn open(path: &Path, rotation: LogRotation) -> std::io::Result<Self> {
        let limit = match rotation.max_bytes {
            Some(n) => ContentLimit::BytesSurpassed(usize::try_from(n).unwrap_or(usize::MAX)),
            None => ContentLimit::None,
        };
        // `FileRotate::new` drops an open that fails, and panics when it
        // cannot list the directory (`file-rotate` 0.7): both are tried
        // here first, so that they come back as errors.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        if let Some(dir) = path.parent() {
            std::fs::read_dir(dir)?;
        }
        // What is left is a race for the last descriptor with another
        // task: caught, so that it fails one instance's start, not the host.
        std::panic::catch_unwind(|| {
            FileRotate::new(
                path,
                AppendCount::new(rotation.keep),
                limit,
                Compression::None,
                Some(0o600),
            )
        })
        .map(|f| Self(Arc::new(Mutex::new(f))))
        .map_err(|_| std::io::Error::other("cannot open the log file (file-rotate panicked)"))
    }

    /// Appends `bytes`; a write that fails (a full disk) is dropped with a
    /// warning rather than blocking the instance.
    pub(crate) fn write(&self, bytes: &[u8]) {
        let mut file = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = file.write_all(bytes).and_then(|()| file.flush()) {
            tracing::warn!(error = %e, "cannot write an instance's output to its log");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_past_the_limit_rotates_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!(
            "muster-instance-log-{}-{}",
            std::process::id(),
            muster_core::id::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
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
}
