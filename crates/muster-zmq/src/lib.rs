//! The embedded ZeroMQ bus and the ZeroMQ transport of muster.
//!
//! - [`Bus`] is the device `muster bus` (and the host) runs: a registry
//!   that instances join with their own RPC endpoint, kept alive by
//!   heartbeats, and an XSUB/XPUB forwarder for events.
//! - [`ZmqTransport`] implements [`muster_core::transport::Transport`]: RPC
//!   goes straight from caller to instance (DEALER → ROUTER, one hop),
//!   balanced by least outstanding requests; events go through the bus.
//!
//! ```no_run
//! # async fn demo() -> Result<(), muster_core::Error> {
//! use muster_zmq::{Bus, BusAddr, ZmqTransport};
//! let addr: BusAddr = "zmq://127.0.0.1:7700".parse()?;
//! let bus = Bus::start(addr.clone(), Default::default()).await?;
//! let transport = ZmqTransport::connect(addr, Default::default()).await?;
//! # drop((bus, transport)); Ok(()) }
//! ```

mod addr;
pub mod bus;
mod control;
pub mod curve;
pub mod listen;
mod socket;
mod transport;

pub use addr::{Addresses, BusAddr, DEFAULT_BUS, DirectEvents};
pub use bus::{
    BadFsyncPolicy, Bus, BusOptions, DEFAULT_HEARTBEATS_PER_SEC, FsyncPolicy, QueueStore,
    RegistryEvent,
};
pub use curve::{Curve, CurveError};
pub use listen::PortRange;
pub use transport::{ZmqOptions, ZmqTransport};
