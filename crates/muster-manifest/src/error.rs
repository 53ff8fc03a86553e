//! What can be wrong with a manifest: the file, the line and the key.

use std::path::PathBuf;

/// A manifest that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {}", file.display())]
    Io {
        /// The manifest file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("{}:{line}: {key}: {message}", file.display())]
    Invalid {
        /// The manifest file.
        file: PathBuf,
        /// 1-based line of the fault.
        line: usize,
        /// The key at fault, as a dotted path (`service[1].restart`).
        key: String,
        /// What is wrong.
        message: String,
    },
}
