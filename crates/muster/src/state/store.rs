//! Where an owner keeps its state across restarts: a file holding a
//! snapshot line followed by one line per change (appended as changes
//! happen, so a `kill -9` loses nothing already written), rewritten as a
//! single snapshot every 10,000 changes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StateKind;

/// Changes appended before the file is rewritten as one snapshot.
const COMPACT_EVERY: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Head<E, S> {
    epoch: E,
    seq: u64,
    value: S,
}

#[derive(Serialize, Deserialize)]
struct Line<C> {
    seq: u64,
    change: C,
}

/// An open state file.
pub(crate) struct FileStore {
    path: PathBuf,
    file: File,
    lines: usize,
}

/// What a state file held.
pub(crate) struct Loaded<S> {
    pub(crate) epoch: String,
    pub(crate) seq: u64,
    pub(crate) value: S,
}

impl FileStore {
    /// Reads `path` (if there is one): its snapshot with the changes after
    /// it replayed. A torn last line (a crash mid-write) is ignored.
    pub(crate) fn load<S: StateKind>(path: &Path) -> std::io::Result<Option<Loaded<S>>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut lines = BufReader::new(file).lines();
        let Some(head) = lines.next().transpose()? else {
            return Ok(None);
        };
        let head: Head<String, S> = serde_json::from_str(&head).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a state file: {e}", path.display()),
            )
        })?;
        let mut loaded = Loaded {
            epoch: head.epoch,
            seq: head.seq,
            value: head.value,
        };
        for line in lines {
            let Ok(line) = line else { break };
            let Ok(l) = serde_json::from_str::<Line<S::Change>>(&line) else {
                break;
            };
            if l.seq == loaded.seq + 1 {
                loaded.value.apply(l.change);
                loaded.seq = l.seq;
            }
        }
        Ok(Some(loaded))
    }

    /// Starts a file at `path` holding `value` as of `seq`.
    pub(crate) fn create<S: Serialize>(
        path: &Path,
        epoch: &str,
        seq: u64,
        value: &S,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            serde_json::to_writer(&mut f, &Head { epoch, seq, value })?;
            f.write_all(b"\n")?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            lines: 0,
        })
    }

    /// Appends a change; rewrites the file as one snapshot now and then
    /// (`current` gives the value then).
    pub(crate) fn append<S: Serialize, C: Serialize>(
        &mut self,
        epoch: &str,
        seq: u64,
        change: &C,
        current: impl FnOnce() -> S,
    ) -> std::io::Result<()> {
        if self.lines >= COMPACT_EVERY {
            *self = Self::create(&self.path, epoch, seq, &current())?;
            return Ok(());
        }
        let mut line = serde_json::to_vec(&Line { seq, change })?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.lines += 1;
        Ok(())
    }
}
