//! The record of running transactions (`<state_dir>/transactions.json`),
//! so a host that starts again brings the same transactions back.

use std::path::Path;

use crate::supervisor::Persisted;

/// File name inside the state directory.
pub(crate) const FILE: &str = "transactions.json";

/// Reads the record; a missing file is an empty record, an unreadable one
/// is reported and treated as empty (never a reason not to start).
pub(crate) fn load(state_dir: &Path) -> Vec<Persisted> {
    let path = state_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable transaction record");
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the transaction record");
            Vec::new()
        }
    }
}

/// Writes the record atomically (a temporary file renamed over the old).
///
/// # Errors
/// The file cannot be written.
pub(crate) fn save(state_dir: &Path, txns: &[Persisted]) -> std::io::Result<()> {
    muster_core::fs::private_write(&state_dir.join(FILE), &serde_json::to_vec_pretty(txns)?)
}
