//! The muster host: runs contexts of services from a manifest as
//! supervised OS processes on an embedded bus (`muster up`).
//!
//! - [`manifest`] reads `muster.toml` (documented in `docs/manifest.md`).
//! - [`supervisor`] is the state machine: restart policies, strategies,
//!   budgets, dependency order, triggers. It does no I/O.
//! - [`run`] drives it: the bus, the control service `muster.host`,
//!   processes, timers and the transaction record.
//!
//! ```no_run
//! # async fn demo() -> Result<(), muster_host::HostError> {
//! use muster_host::{HostOptions, run};
//! let options = HostOptions {
//!     files: vec!["muster.toml".into()],
//!     ..Default::default()
//! };
//! // Runs until SIGINT/SIGTERM (or the future given as `stop`).
//! run(options, None, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod control;
pub mod events;
pub mod fdlimit;
mod host;
mod http;
pub mod instance_log;
pub mod monitor;
mod persist;
pub mod process;
pub mod procstat;
pub mod status;
pub mod supervisor;
pub mod token;
mod watch;

pub use control::{
    Challenge, ChallengeRequest, ControlAuth, ControlRequest, Controller, Done, HostRef, REFUSED,
};
pub use host::{HostError, HostInfo, HostOptions, run};
/// The manifest's model and parser (the `muster-manifest` crate).
pub use muster_manifest as manifest;
pub use muster_manifest::{Manifest, ManifestError};
pub use status::Status;
