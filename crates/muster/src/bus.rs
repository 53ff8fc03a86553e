//! Choosing a transport from a bus URL.

use std::path::Path;
use std::sync::Arc;

use muster_zmq::{Addresses, BusAddr, ZmqOptions, ZmqTransport};

use crate::transport::SharedTransport;
use crate::{Error, ErrorKind};

pub use muster_zmq::DEFAULT_BUS;

/// Transport settings that do not depend on the bus kind.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BusOptions {
    /// Largest message sent or accepted.
    pub max_message_size: usize,
    /// What this process proves itself with on the embedded bus's
    /// registry (`docs/security.md`): needed to register, heartbeat, claim
    /// and work queues on a bus with a secret (a host's, `muster bus`'s).
    pub credential: Option<muster_core::auth::Credential>,
    /// The fleet's CURVE keys on the embedded bus (`MUSTER_CURVE=DIR`,
    /// `docs/fleet.md`).
    pub curve: Option<muster_zmq::Curve>,
    /// Let this process's RPC endpoints listen in the clear beyond
    /// loopback on the embedded bus (`MUSTER_PLAIN_TCP=1`).
    pub plain_tcp: bool,
    /// The interface this process's RPC endpoints bind on the embedded bus
    /// (`MUSTER_BIND_HOST`, default `127.0.0.1`): an address the other
    /// machines of a fleet reach it at.
    pub bind_host: Option<String>,
    /// The host callers are told to reach this process's RPC endpoints at
    /// when it is not `bind_host`: behind NAT, or in a container whose
    /// ports are published (`MUSTER_ADVERTISE_HOST`, `docs/deploy.md`).
    pub advertise_host: Option<String>,
    /// The ports this process's RPC endpoints may bind, the first free one
    /// taken (`MUSTER_RPC_PORTS=7710-7739`); `None`: any free port.
    pub rpc_ports: Option<muster_zmq::PortRange>,
}

/// Environment variable naming the interface RPC endpoints bind.
pub const BIND_HOST_ENV: &str = "MUSTER_BIND_HOST";

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            max_message_size: crate::wire::DEFAULT_MAX_MESSAGE_SIZE,
            credential: None,
            curve: None,
            plain_tcp: false,
            bind_host: None,
            advertise_host: None,
            rpc_ports: None,
        }
    }
}

impl BusOptions {
    /// The defaults, with the credential this process was given
    /// (`MUSTER_CREDENTIAL`, `MUSTER_CREDENTIAL_FILE`, or
    /// `.muster/bus.secret` in the working directory), its CURVE keys
    /// (`MUSTER_CURVE`), `MUSTER_PLAIN_TCP`, `MUSTER_BIND_HOST`,
    /// `MUSTER_ADVERTISE_HOST` and `MUSTER_RPC_PORTS`.
    ///
    /// # Errors
    /// A credential or keys directory that is given but cannot be read or
    /// is not valid; a port range that is not one.
    pub fn from_environment() -> Result<Self, Error> {
        let credential = muster_core::auth::Credential::from_environment()
            .map_err(|e| Error::with_source(ErrorKind::Config, format!("credential: {e}"), e))?;
        let curve = muster_zmq::Curve::from_environment()?;
        Ok(Self {
            credential,
            curve,
            plain_tcp: muster_zmq::curve::plain_tcp_from_environment(),
            bind_host: non_empty_env(BIND_HOST_ENV),
            advertise_host: non_empty_env(muster_zmq::listen::ADVERTISE_HOST_ENV),
            rpc_ports: non_empty_env(muster_zmq::listen::RPC_PORTS_ENV)
                .map(|r| r.parse())
                .transpose()?,
            ..Self::default()
        })
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Connects to the bus at `url`, or in direct mode when an addresses file
/// is given.
///
/// | URL | transport |
/// |---|---|
/// | `zmq://HOST:PORT` | the embedded ZeroMQ bus (default `zmq://127.0.0.1:7700`) |
/// | `amqp://USER:PASS@HOST:PORT/VHOST[?exchange=NAME]` | RabbitMQ (topic exchange, durable queues) |
/// | `redis://HOST:PORT[/DB][?prefix=NAME]` | Redis (lists, pub/sub, streams) |
/// | `nats://HOST:PORT[?prefix=NAME]` | NATS (request/reply, subjects, NATS micro, JetStream) |
///
/// The credential comes from the environment ([`BusOptions::from_environment`]).
///
/// # Errors
/// An unknown scheme, a malformed URL or addresses file, a credential that
/// is given but not valid.
pub async fn connect(url: &str, addresses: Option<&Path>) -> Result<SharedTransport, Error> {
    connect_with(url, addresses, &BusOptions::from_environment()?).await
}

/// [`connect`] with options.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(
    url: &str,
    addresses: Option<&Path>,
    options: &BusOptions,
) -> Result<SharedTransport, Error> {
    let mut zmq = ZmqOptions::default();
    zmq.max_message_size = options.max_message_size;
    zmq.credential.clone_from(&options.credential);
    zmq.curve.clone_from(&options.curve);
    zmq.plain_tcp = options.plain_tcp;
    if let Some(h) = &options.bind_host {
        zmq.bind_host.clone_from(h);
    }
    zmq.advertise_host.clone_from(&options.advertise_host);
    zmq.rpc_ports = options.rpc_ports;
    if let Some(path) = addresses {
        let a = Addresses::load(path)?;
        return Ok(Arc::new(ZmqTransport::direct(a, zmq).await?));
    }
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "zmq" | "tcp" => {
            let addr: BusAddr = url.parse()?;
            Ok(Arc::new(ZmqTransport::connect(addr, zmq).await?))
        }
        "amqp" | "amqps" => amqp::connect(url, options).await,
        "redis" | "rediss" => redis::connect(url, options).await,
        "nats" | "tls" => nats::connect(url, options).await,
        _ => Err(Error::new(
            ErrorKind::Config,
            format!(
                "unknown bus URL {url:?}: expected zmq://HOST:PORT, amqp://HOST:PORT, redis://HOST:PORT or nats://HOST:PORT"
            ),
        )),
    }
}

/// RabbitMQ, with the `amqp` feature.
#[cfg(feature = "amqp")]
mod amqp {
    use super::{Arc, BusOptions, Error, SharedTransport};

    pub(super) async fn connect(url: &str, options: &BusOptions) -> Result<SharedTransport, Error> {
        let mut amqp = muster_amqp::AmqpOptions::default();
        amqp.max_message_size = options.max_message_size;
        Ok(Arc::new(
            muster_amqp::AmqpTransport::connect_with(url, amqp).await?,
        ))
    }
}

/// Redis, with the `redis` feature.
#[cfg(feature = "redis")]
mod redis {
    use super::{Arc, BusOptions, Error, SharedTransport};

    pub(super) async fn connect(url: &str, options: &BusOptions) -> Result<SharedTransport, Error> {
        let mut redis = muster_redis::RedisOptions::default();
        redis.max_message_size = options.max_message_size;
        Ok(Arc::new(
            muster_redis::RedisTransport::connect_with(url, redis).await?,
        ))
    }
}

/// NATS, with the `nats` feature.
#[cfg(feature = "nats")]
mod nats {
    use super::{Arc, BusOptions, Error, SharedTransport};

    pub(super) async fn connect(url: &str, options: &BusOptions) -> Result<SharedTransport, Error> {
        let mut nats = muster_nats::NatsOptions::default();
        nats.max_message_size = options.max_message_size;
        Ok(Arc::new(
            muster_nats::NatsTransport::connect_with(url, nats).await?,
        ))
    }
}

/// A bus this build leaves out: a clear error naming the feature.
#[cfg(not(feature = "nats"))]
mod nats {
    use super::{BusOptions, Error, SharedTransport};

    pub(super) async fn connect(url: &str, _: &BusOptions) -> Result<SharedTransport, Error> {
        Err(super::left_out(url, "nats"))
    }
}

/// A bus this build leaves out: a clear error naming the feature.
#[cfg(not(feature = "amqp"))]
mod amqp {
    use super::{BusOptions, Error, SharedTransport};

    pub(super) async fn connect(url: &str, _: &BusOptions) -> Result<SharedTransport, Error> {
        Err(super::left_out(url, "amqp"))
    }
}

/// A bus this build leaves out: a clear error naming the feature.
#[cfg(not(feature = "redis"))]
mod redis {
    use super::{BusOptions, Error, SharedTransport};

    pub(super) async fn connect(url: &str, _: &BusOptions) -> Result<SharedTransport, Error> {
        Err(super::left_out(url, "redis"))
    }
}

/// The error for a bus this build leaves out.
#[cfg(not(all(feature = "amqp", feature = "redis", feature = "nats")))]
fn left_out(url: &str, feature: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "{url}: this build of muster has no {feature} transport (the muster crate's cargo feature `{feature}`, on by default, is off)"
        ),
    )
}
