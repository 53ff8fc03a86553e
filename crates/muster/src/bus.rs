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
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            max_message_size: crate::wire::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// Connects to the bus at `url`, or in direct mode when an addresses file
/// is given.
///
/// | URL | transport |
/// |---|---|
/// | `zmq://HOST:PORT` | the embedded ZeroMQ bus (default `zmq://127.0.0.1:7700`) |
/// | `amqp://USER:PASS@HOST:PORT/VHOST[?exchange=NAME]` | RabbitMQ (topic exchange, durable queues) |
/// | `redis://HOST:PORT[/DB][?prefix=NAME]` | Redis (lists, pub/sub, streams) |
///
/// # Errors
/// An unknown scheme, a malformed URL or addresses file.
pub async fn connect(url: &str, addresses: Option<&Path>) -> Result<SharedTransport, Error> {
    connect_with(url, addresses, &BusOptions::default()).await
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
        #[cfg(feature = "amqp")]
        "amqp" => {
            let mut amqp = muster_amqp::AmqpOptions::default();
            amqp.max_message_size = options.max_message_size;
            Ok(Arc::new(
                muster_amqp::AmqpTransport::connect_with(url, amqp).await?,
            ))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let mut redis = muster_redis::RedisOptions::default();
            redis.max_message_size = options.max_message_size;
            Ok(Arc::new(
                muster_redis::RedisTransport::connect_with(url, redis).await?,
            ))
        }
        #[cfg(not(feature = "amqp"))]
        "amqp" => Err(left_out(url, "amqp")),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(left_out(url, "redis")),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!(
                "unknown bus URL {url:?}: expected zmq://HOST:PORT, amqp://HOST:PORT or redis://HOST:PORT"
            ),
        )),
    }
}

/// The error for a bus this build leaves out.
#[cfg(not(all(feature = "amqp", feature = "redis")))]
fn left_out(url: &str, feature: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "{url}: this build of muster has no {feature} transport (the muster crate's cargo feature `{feature}`, on by default, is off)"
        ),
    )
}
