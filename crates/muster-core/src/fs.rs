//! Files only their owner may read: the state directory, secrets, logs and
//! records (`docs/security.md`).

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) if needed and makes it `0700`.
///
/// # Errors
/// When it cannot be created or its mode set.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens `path` for appending, created `0600` (an existing file that
/// others could read is made `0600`).
///
/// # Errors
/// When it cannot be opened or its mode set.
pub fn private_append(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    keep_private(&f)?;
    Ok(f)
}

/// Writes `contents` to `path` through a `0600` temporary file renamed
/// into place (a reader never sees half a file).
///
/// # Errors
/// When it cannot be written.
pub fn private_write(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    keep_private(&f)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Creates `path` holding `contents`, `0600`, unless it exists: written to
/// a temporary file first and linked into place, so a reader never sees it
/// half written and of two processes racing, one wins and the other is
/// told. `Ok(false)`: it existed and was left alone.
///
/// # Errors
/// When it cannot be written.
pub fn private_create_new(path: &Path, contents: &[u8]) -> io::Result<bool> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn keep_private(f: &File) -> io::Result<()> {
    let mode = f.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        f.set_permissions(Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_others_could_read_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, Permissions::from_mode(0o755)).unwrap();
        private_dir(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        let log = state.join("a.log");
        std::fs::write(&log, "x").unwrap();
        std::fs::set_permissions(&log, Permissions::from_mode(0o644)).unwrap();
        drop(private_append(&log).unwrap());
        assert_eq!(mode(&log), 0o600);
        private_write(&state.join("r.json"), b"{}").unwrap();
        assert_eq!(mode(&state.join("r.json")), 0o600);
    }
}
