//! The job log: the jobs of the bus's work queues on disk, so that a bus
//! started again after a crash (kill -9, power cut) has every job it
//! accepted.
//!
//! The registry keeps its queues in memory ([`QueueBook`]) and journals
//! every change to them; a writer task applies the changes to a `redb`
//! database in batches, one transaction each, and tells the registry when
//! a batch is on disk. An `enqueue` is answered only then. `redb` was
//! chosen for crash safety (copy-on-write pages with checksummed commits:
//! a torn write leaves the last commit), a pure Rust build of a few
//! seconds, and reuse of freed pages (a file holds the live jobs, not
//! their history; it is compacted when the queues drain). The choice and
//! the figures are in `docs/guarantees.md` and `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use muster_core::queue::{Job, JobChange, QueueBook};
use muster_core::wire::Header;
use muster_core::{Error, ErrorKind};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Key: the book's job key (growing, so the table reads back in queue
/// order). Value: a [`Record`] as JSON.
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");

/// Memory redb may use to cache the log's pages.
const CACHE_BYTES: usize = 8 << 20;

/// A drained log larger than this is compacted (given back to the disk).
const COMPACT_ABOVE: u64 = 4 << 20;

/// Where the bus keeps the jobs of its work queues.
///
/// ```no_run
/// use muster_zmq::{Bus, BusAddr, BusOptions, FsyncPolicy, QueueStore};
///
/// # async fn run() -> Result<(), muster_core::Error> {
/// let mut options = BusOptions::default();
/// options.queue_store = QueueStore::Disk {
///     path: ".muster/queues.redb".into(),
///     fsync: FsyncPolicy::Always,
/// };
/// let addr: BusAddr = "zmq://127.0.0.1:7700".parse().expect("a bus URL");
/// // Every job an `enqueue` was answered for is in the file, after a
/// // crash too.
/// let bus = Bus::start(addr, options).await?;
/// bus.stop().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueStore {
    /// In the bus's memory: the fastest, and lost with the bus process.
    #[default]
    Memory,
    /// In a job log on disk (a `redb` file), written before `enqueue` is
    /// answered.
    Disk {
        /// The log file; its directory is created if missing.
        path: PathBuf,
        /// When the log is flushed to the disk.
        fsync: FsyncPolicy,
    },
}

/// When the job log is flushed to the disk (`fsync`). Under either
/// policy an `enqueue` is answered once its job is flushed: the policies
/// trade the latency of one `enqueue` for fewer flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Flush as soon as the previous flush is done, with every change that
    /// came meanwhile (group commit without waiting).
    #[default]
    Always,
    /// Gather changes for this long, then flush them together.
    Every(Duration),
}

/// A `fsync` setting that is not `always` or a duration such as `5ms`.
#[derive(Debug, thiserror::Error)]
#[error("fsync policy {0:?} is neither \"always\" nor a duration such as \"5ms\"")]
pub struct BadFsyncPolicy(String);

impl FromStr for FsyncPolicy {
    type Err = BadFsyncPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "always" {
            return Ok(Self::Always);
        }
        let ms = s
            .strip_suffix("ms")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .filter(|n| *n <= 1_000);
        ms.map(|n| Self::Every(Duration::from_millis(n)))
            .ok_or_else(|| BadFsyncPolicy(s.to_owned()))
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Every(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// A job as the log keeps it.
#[derive(Serialize, Deserialize)]
struct Record {
    queue: String,
    job: Job,
}

/// An `enqueue` waiting for its job to reach the disk.
#[derive(Debug)]
pub(super) struct Accepted {
    /// The producer's routing identity.
    pub(super) identity: Bytes,
    /// The request's header, to answer it.
    pub(super) header: Header,
    /// Where the job is in the book.
    pub(super) queue: String,
    pub(super) key: u64,
}

/// A batch written (or not), sent back to the registry.
#[derive(Debug)]
pub(super) struct Committed {
    pub(super) accepted: Vec<Accepted>,
    /// Why the batch is not on disk.
    pub(super) error: Option<String>,
}

/// Changes sent to the writer and not yet written past which `enqueue` is
/// refused ("the job log is behind"): the channel to the writer is
/// otherwise unbounded, and producers faster than the disk would grow it.
pub(super) const MAX_BACKLOG: usize = 200_000;

/// The registry's end of the log.
#[derive(Debug)]
pub(super) struct JobLog {
    tx: mpsc::UnboundedSender<(Vec<JobChange>, Vec<Accepted>)>,
    writer: tokio::task::JoinHandle<()>,
    /// Changes sent and not yet written.
    backlog: Arc<AtomicUsize>,
}

impl JobLog {
    /// Opens (or creates) the log at `path` and reads its jobs into a
    /// journaling book; the writer answers on `committed`.
    ///
    /// # Errors
    /// The file cannot be created or read, or another bus has it open.
    pub(super) async fn open(
        path: &Path,
        fsync: FsyncPolicy,
        book: &mut QueueBook,
        committed: mpsc::UnboundedSender<Committed>,
    ) -> Result<Self, Error> {
        let owned = path.to_owned();
        let (db, jobs) = tokio::task::spawn_blocking(move || read_all(&owned))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("job log reader: {e}")))??;
        let n = jobs.len();
        for (key, r) in jobs {
            book.restore(key, &r.queue, r.job);
        }
        if n > 0 {
            tracing::info!(jobs = n, path = %path.display(), "jobs read back from the job log");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write(
            db,
            rx,
            committed,
            fsync,
            path.to_owned(),
            backlog.clone(),
        ));
        Ok(Self {
            tx,
            writer,
            backlog,
        })
    }

    /// True when the writer is more than [`MAX_BACKLOG`] changes behind.
    pub(super) fn is_behind(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > MAX_BACKLOG
    }

    /// Writes what was sent and closes the file (another bus may then
    /// open it).
    pub(super) async fn close(self) {
        drop(self.tx);
        let _ = self.writer.await;
    }

    /// Queues changes (and the enqueues they answer) for the writer. The
    /// enqueues come back when the writer is gone (it failed): nothing
    /// will answer them.
    pub(super) fn send(
        &self,
        changes: Vec<JobChange>,
        accepted: Vec<Accepted>,
    ) -> Result<(), Vec<Accepted>> {
        let n = changes.len();
        self.backlog.fetch_add(n, Ordering::Relaxed);
        self.tx.send((changes, accepted)).map_err(|e| {
            self.backlog.fetch_sub(n, Ordering::Relaxed);
            (e.0).1
        })
    }
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io, format!("job log {}: {e}", path.display()))
}

/// Opens the database and reads every job, in key order.
fn read_all(path: &Path) -> Result<(Database, Vec<(u64, Record)>), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| store_error(path, e))?;
    }
    // redb caches up to 1 GiB of pages by default: the bus's memory would
    // grow with the disk's history. The log is read once, at start; a
    // small cache bounds the bus's memory to the queues themselves.
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                store_error(path, "in use by another bus (one bus per state directory)")
            }
            e => store_error(path, e),
        })?;
    let init = db.begin_write().map_err(|e| store_error(path, e))?;
    init.open_table(JOBS).map_err(|e| store_error(path, e))?;
    init.commit().map_err(|e| store_error(path, e))?;
    let read = db.begin_read().map_err(|e| store_error(path, e))?;
    let table = read.open_table(JOBS).map_err(|e| store_error(path, e))?;
    let mut jobs = Vec::new();
    let mut unreadable = 0u64;
    for row in table.iter().map_err(|e| store_error(path, e))? {
        let (k, v) = row.map_err(|e| store_error(path, e))?;
        match serde_json::from_slice::<Record>(v.value()) {
            Ok(r) => jobs.push((k.value(), r)),
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::error!(unreadable, path = %path.display(), "job log records that cannot be read were skipped");
    }
    drop(table);
    drop(read);
    Ok((db, jobs))
}

/// The writer: one transaction per batch of changes, flushed under the
/// policy, then the registry is told.
async fn write(
    mut db: Database,
    mut rx: mpsc::UnboundedReceiver<(Vec<JobChange>, Vec<Accepted>)>,
    committed: mpsc::UnboundedSender<Committed>,
    fsync: FsyncPolicy,
    path: PathBuf,
    backlog: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    loop {
        if rx.recv_many(&mut batch, 1024).await == 0 {
            return;
        }
        if let FsyncPolicy::Every(d) = fsync {
            tokio::time::sleep(d).await;
        }
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut accepted = Vec::new();
        // Only the last change of a key matters: a job enqueued and
        // acknowledged within one batch never reaches the disk.
        let mut last: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
        for (changes, acc) in batch.drain(..) {
            accepted.extend(acc);
            backlog.fetch_sub(changes.len(), Ordering::Relaxed);
            for c in changes {
                match c {
                    JobChange::Put { key, queue, job } => {
                        let v = serde_json::to_vec(&Record { queue, job }).unwrap_or_default();
                        last.insert(key, Some(v));
                    }
                    JobChange::Delete { key } => {
                        last.insert(key, None);
                    }
                }
            }
        }
        let file = path.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let r = apply(&mut db, &last, &file);
            (db, r)
        })
        .await;
        let (back, result) = match outcome {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "job log writer failed; enqueue now fails");
                let _ = committed.send(Committed {
                    accepted,
                    error: Some(format!("job log writer failed: {e}")),
                });
                return;
            }
        };
        db = back;
        let error = result.err().map(|e| {
            let e = store_error(&path, e);
            tracing::error!(error = %e, "jobs not written to the job log");
            e.to_string()
        });
        let _ = committed.send(Committed { accepted, error });
    }
}

/// Applies one batch in one transaction; compacts the file once the
/// queues are empty.
fn apply(
    db: &mut Database,
    last: &BTreeMap<u64, Option<Vec<u8>>>,
    path: &Path,
) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    let empty = {
        let mut t = tx.open_table(JOBS)?;
        for (key, v) in last {
            match v {
                Some(v) => {
                    t.insert(key, v.as_slice())?;
                }
                None => {
                    t.remove(key)?;
                }
            }
        }
        t.len()? == 0
    };
    tx.commit()?;
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    if empty && size > COMPACT_ABOVE {
        db.compact()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies_parse() {
        assert_eq!(
            "always".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Always
        );
        assert_eq!(
            " 5ms".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Every(Duration::from_millis(5))
        );
        assert_eq!(
            FsyncPolicy::Every(Duration::from_millis(5)).to_string(),
            "5ms"
        );
        for bad in ["", "sometimes", "5s", "5000ms", "-1ms"] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
        }
    }
}
