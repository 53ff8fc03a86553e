//! # muster
//!
//! Message-driven microservices: small services that expose typed RPC
//! methods and publish and consume events, on an embedded ZeroMQ bus with
//! nothing to install.
//!
//! ## A service
//!
//! ```no_run
//! use muster::prelude::*;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Shout { text: String, times: Option<u32> }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Echoed { text: String }
//!
//! async fn shout(ctx: Ctx, Args(a): Args<Shout>) -> Result<Echoed, RpcError> {
//!     ctx.publish("echo.shouted", &a.text).await?;
//!     Ok(Echoed { text: a.text.repeat(a.times.unwrap_or(1) as usize) })
//! }
//!
//! fn main() -> muster::Result<()> {
//!     Service::new("echo").rpc("shout", shout).run()
//! }
//! ```
//!
//! - **Handlers** are async functions of extractors ([`Args`], [`Ctx`],
//!   [`Config`], [`Header`]) returning `Result<T, E: Into<RpcError>>`. Their
//!   argument and result types derive `serde` and `schemars`; discovery
//!   publishes the JSON Schemas. Params that do not fit are answered with
//!   -32602 naming the field; the handler never sees them.
//! - **Events**: [`Service::subscribe`] with `a.*.c` / `a.>` patterns,
//!   [`Ctx::publish`]; [`Service::durable`] keeps a group's events while
//!   its members are down.
//! - **Main mode**: [`Service::main`] runs a producer function (with `-m`).
//! - **The standard CLI**: [`Service::run`] parses `-c FILE`, `--bus URL`,
//!   logging flags and `--key value` config overrides (see [`cli`]).
//! - **Tests**: [`testing::TestBus`] runs services in memory.
//! - **Several services in one process**: [`Group`].
//!
//! The wire protocol is in `docs/protocol.md`; a Python program with pyzmq
//! can call muster services and serve them.

pub mod bus;
mod cancel;
pub mod cli;
mod client;
pub mod config;
mod ctx;
pub mod dotenv;
pub mod extract;
mod group;
pub mod handler;
pub mod layer;
pub mod logging;
pub mod memory;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod prelude;
pub mod reply;
mod runtime;
mod sampling;
pub mod schedule;
mod secret;
mod service;
pub mod state;
pub mod stats;
pub mod testing;

pub use cancel::uninterruptible;
pub use client::{CallOptions, Client, DEFAULT_TIMEOUT, Event, Subscription};
pub use ctx::{Ctx, UPDATE_TOPIC};
pub use extract::{Args, Config};
pub use group::Group;
pub use handler::Handler;
/// The allocator muster's own binaries use: mimalloc, built without
/// transparent huge pages, so an idle instance stays as small as with the
/// system's allocator (docs/benchmarks.md, "The allocator"). A service
/// makes it its binary's allocator with:
///
/// ```
/// #[global_allocator]
/// static ALLOC: muster::Allocator = muster::Allocator;
/// # fn main() {}
/// ```
#[cfg(feature = "mimalloc")]
pub use mimalloc::MiMalloc as Allocator;
pub use muster_core::durable::{self, Retention};
pub use muster_core::duration;
pub use muster_core::id;
pub use muster_core::queue;
pub use muster_core::registry;
pub use muster_core::transport;
pub use muster_core::wire;
pub use muster_core::wire::Header;
pub use muster_core::{Error, ErrorKind, RpcError, error::code};
pub use runtime::{ServiceHandle, StartOptions};
pub use secret::Secret;
pub use service::{BoxError, Service};

/// The result of fallible muster set-up and of `main`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
