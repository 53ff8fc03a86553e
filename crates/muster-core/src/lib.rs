//! The shared vocabulary of muster: the wire protocol, the error types and
//! the [`Transport`](transport::Transport) trait that every bus implements.
//!
//! Service authors use the `muster` crate; this crate is what transports
//! (`muster-zmq` and the brokers) depend on, so they never depend on each
//! other or on the service framework.
//!
//! ```
//! use muster_core::wire::{Envelope, Header, Kind};
//!
//! let env = Envelope::new(Header::new(Kind::Event).with_topic("echo.shouted"), "\"hi\"");
//! let frames = env.to_frames();
//! assert_eq!(Envelope::from_frames(&frames).unwrap(), env);
//! ```

pub mod auth;
pub mod durable;
pub mod duration;
pub mod error;
pub mod fs;
pub mod id;
pub mod inline;
pub mod queue;
pub mod registry;
pub mod retry;
pub mod topic;
pub mod transport;
pub mod wire;

pub use error::{Error, ErrorKind, RpcError};
