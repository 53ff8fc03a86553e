//! `muster new` and `muster import`: one model of a context of services
//! ([`spec`]), three ways to fill it (command-line flags, a
//! `services.toml` file, context_task_queue's XML files) and one writer
//! ([`generate`]) that turns it into Cargo projects and a manifest.
//!
//! ```
//! use muster_scaffold::spec::ServiceSpec;
//!
//! let svc = ServiceSpec::new("greeter").unwrap();
//! let lib_rs = muster_scaffold::generate::lib_rs(&svc);
//! assert!(lib_rs.contains("Service::new(\"greeter\")"));
//! ```

pub mod generate;
pub mod import;
pub mod services_file;
pub mod spec;

/// Why a scaffold cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaffoldError {
    /// A name muster cannot use.
    #[error("{what} {name:?} is not valid: {why}")]
    BadName {
        /// What the name is for.
        what: &'static str,
        /// The name.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// The target exists; nothing was written.
    #[error("{0} already exists; nothing was written")]
    Exists(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A `services.toml` or XML file that does not say what it must.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: String,
        /// What is wrong, with the element or key.
        message: String,
    },
}
