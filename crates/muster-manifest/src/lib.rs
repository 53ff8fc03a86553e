//! The manifest (`muster.toml`): what a host runs. Every key, its default
//! and an example are in `docs/manifest.md`; this crate parses a file into
//! checked [`ContextSpec`]s and says, for anything wrong, the file, the
//! line and the key at fault. The host runs what it describes; the
//! scaffold writes and checks manifests; neither needs the other.
//!
//! - [`model`]: the checked form (contexts, services, triggers, limits).
//! - [`load`]: files to model ([`Manifest::load`], [`parse`]).
//! - `raw` and `check` (private): the TOML as written, and the checks.
//!
//! ```
//! use std::path::Path;
//! use muster_manifest::{RestartPolicy, Substitutions, parse};
//!
//! let text = r#"
//! [context]
//! name = "morning"
//!
//! [[service]]
//! name = "echo"
//! run = ["muster-example-echo"]
//! restart = "transient"
//! "#;
//! let (_, context) = parse(Path::new("muster.toml"), text, true, &Substitutions::default())?;
//! assert_eq!(context.services[0].restart, RestartPolicy::Transient);
//!
//! let err = parse(Path::new("muster.toml"), "[context]\nname = 1\n", true, &Substitutions::default());
//! assert!(err.unwrap_err().to_string().starts_with("muster.toml:2: context.name"));
//! # Ok::<(), muster_manifest::ManifestError>(())
//! ```

mod check;
mod error;
pub mod load;
pub mod model;
mod raw;

pub use error::ManifestError;
pub use load::{Substitutions, parse};
pub use model::*;

#[cfg(test)]
mod tests;
