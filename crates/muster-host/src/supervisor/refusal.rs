//! Why the host refused a control command (`muster ctl`, the HTTP API).

use muster_manifest::ManifestError;

/// A control command the host did not carry out, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The host is stopping; it starts nothing more.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// Several contexts could be meant.
    #[error("name the context to start: {}", .0.join(", "))]
    ContextNeeded(Vec<String>),
    /// No context of that name.
    #[error("no context {0:?} in the manifest")]
    UnknownContext(String),
    /// Not a transaction id.
    #[error("{0:?} is not a transaction id (1 to 64 of A-Z, 0-9, `_`, `-`)")]
    BadTransactionId(String),
    /// The transaction id is taken by another context.
    #[error("transaction {transaction} belongs to context {context}")]
    OtherContext {
        /// The transaction.
        transaction: String,
        /// Its context.
        context: String,
    },
    /// Start of a transaction that runs.
    #[error("transaction {0} is already running")]
    AlreadyRunning(String),
    /// Restart of a service of a transaction that does not run.
    #[error("transaction {0} is not running")]
    NotRunning(String),
    /// No transaction of that id.
    #[error("no transaction {0}")]
    UnknownTransaction(String),
    /// No service of that name where it was looked for.
    #[error("no service {service:?} in {within}")]
    UnknownService {
        /// The name given.
        service: String,
        /// `context NAME` or `transaction ID`.
        within: String,
    },
    /// A command for "the" transaction, and none runs.
    #[error("no transaction is running; give one with --transaction")]
    NoneRunning,
    /// A command for "the" transaction, and several run.
    #[error("several transactions are running; give one with --transaction: {}", .0.join(", "))]
    SeveralRunning(Vec<String>),
    /// `reload` of a manifest that is not valid (nothing changed).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// What kind of refusal: how the HTTP API answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalKind {
    /// Names something that does not exist (404).
    NotFound,
    /// Malformed or ambiguous (400).
    Invalid,
    /// Conflicts with what runs (409).
    Conflict,
    /// The host cannot now (503).
    Unavailable,
}

impl Refusal {
    /// Its kind.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Self::ShuttingDown => RefusalKind::Unavailable,
            Self::UnknownContext(_) | Self::UnknownTransaction(_) | Self::UnknownService { .. } => {
                RefusalKind::NotFound
            }
            Self::ContextNeeded(_)
            | Self::BadTransactionId(_)
            | Self::NoneRunning
            | Self::SeveralRunning(_)
            | Self::Manifest(_) => RefusalKind::Invalid,
            Self::OtherContext { .. } | Self::AlreadyRunning(_) | Self::NotRunning(_) => {
                RefusalKind::Conflict
            }
        }
    }
}
