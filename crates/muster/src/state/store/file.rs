//! The file store: the first line is the snapshot, each further line a
//! change. A snapshot is written to a temporary file and renamed into
//! place, so a crash leaves the old one or the new one.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use futures_util::future::BoxFuture;

use super::{Backend, Result, StoreError, Stored, head_text, line_text};

pub(super) struct FileStore {
    path: PathBuf,
    /// Open for appending after the first reset.
    file: Option<File>,
}

impl FileStore {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn read_now(&self) -> Result<Stored> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Vec::new())),
            Err(e) => return Err(self.io(e)),
        };
        let mut lines = BufReader::new(file).lines();
        let head = lines.next().transpose().map_err(|e| self.io(e))?;
        Ok((head, lines.map_while(std::result::Result::ok).collect()))
    }

    fn reset_now(&mut self, epoch: &str, seq: u64, value: &str) -> Result<()> {
        self.file = None;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(head_text(epoch, seq, value).as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .map_err(|e| self.io(e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        let appender = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        self.file = Some(appender);
        Ok(())
    }

    fn append_now(&mut self, seq: u64, change: &str) -> Result<()> {
        let mut line = line_text(seq, change);
        line.push('\n');
        let written = match &mut self.file {
            Some(f) => f.write_all(line.as_bytes()),
            None => Err(std::io::Error::other("not open")),
        };
        written.map_err(|e| self.io(e))
    }
}

impl Backend for FileStore {
    fn read(&mut self) -> BoxFuture<'_, Result<Stored>> {
        Box::pin(async move { self.read_now() })
    }

    fn reset<'a>(
        &'a mut self,
        epoch: &'a str,
        seq: u64,
        value: String,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.reset_now(epoch, seq, &value) })
    }

    fn append(&mut self, seq: u64, change: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.append_now(seq, &change) })
    }
}
