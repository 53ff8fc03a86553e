//! The control token: a random secret the host writes (mode 0600) on
//! first start and `muster ctl` reads. Whoever can read the file may
//! control the host; nobody else can.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Reads the token at `path`, creating it first if there is none.
///
/// # Errors
/// The file cannot be read or created.
pub fn ensure(path: &Path) -> std::io::Result<String> {
    match read(path) {
        Ok(t) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "token file was readable by others; setting mode 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let token = generate()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            writeln!(f, "{token}")?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// Reads the token at `path`.
///
/// # Errors
/// The file cannot be read or is empty.
pub fn read(path: &Path) -> std::io::Result<String> {
    let t = std::fs::read_to_string(path)?.trim().to_owned();
    if t.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("token file {} is empty", path.display()),
        ));
    }
    Ok(t)
}

/// 32 random bytes from the operating system, as hex.
fn generate() -> std::io::Result<String> {
    muster_core::auth::random_hex(32).map_err(std::io::Error::other)
}

/// Compares in constant time (`subtle`), so the time taken does not tell
/// how much of a guess was right.
pub fn matches(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let path = dir.join("token");
        let t = ensure(&path).unwrap();
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure(&path).unwrap(), t, "a second start keeps the token");
        assert!(matches(&t, &t));
        assert!(!matches(&t, "nope"));
    }
}
