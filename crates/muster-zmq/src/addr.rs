//! Where the bus listens, and the direct-mode addresses file.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use muster_core::{Error, ErrorKind};
use serde::Deserialize;

/// The three endpoints of an embedded bus, derived from one base address:
/// `zmq://HOST:PORT` puts the registry on PORT, the event inlet (XSUB) on
/// PORT+1 and the event outlet (XPUB) on PORT+2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusAddr {
    /// Host or IP the bus binds or is reached on.
    pub host: String,
    /// Base port (the registry).
    pub port: u16,
}

/// The default bus: `zmq://127.0.0.1:7700`.
pub const DEFAULT_BUS: &str = "zmq://127.0.0.1:7700";

impl BusAddr {
    /// `tcp://host:port` of the registry.
    pub fn registry(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port)
    }

    /// `tcp://host:port+1`, where publishers send events.
    pub fn events_in(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port.saturating_add(1))
    }

    /// `tcp://host:port+2`, where subscribers receive events.
    pub fn events_out(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port.saturating_add(2))
    }
}

impl std::fmt::Display for BusAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "zmq://{}:{}", self.host, self.port)
    }
}

impl FromStr for BusAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad =
            |why: &str| Error::new(ErrorKind::Config, format!("bad bus address {s:?}: {why}"));
        let rest = s
            .strip_prefix("zmq://")
            .or_else(|| s.strip_prefix("tcp://"))
            .ok_or_else(|| bad("expected zmq://HOST:PORT"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
        let port: u16 = port.parse().map_err(|_| bad("port is not a number"))?;
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if port > u16::MAX - 2 {
            return Err(bad("port must leave room for PORT+1 and PORT+2"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// Direct mode: point-to-point links with no bus, read from `-a FILE`.
///
/// ```json
/// {
///   "bind": "tcp://127.0.0.1:7801",
///   "services": { "echo": ["tcp://127.0.0.1:7800"] },
///   "events": { "bind": "tcp://127.0.0.1:7811", "connect": ["tcp://127.0.0.1:7810"] }
/// }
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Addresses {
    /// Where this process's instance takes requests.
    #[serde(default)]
    pub bind: Option<String>,
    /// Where each named service takes requests.
    #[serde(default)]
    pub services: BTreeMap<String, Vec<String>>,
    /// Event links.
    #[serde(default)]
    pub events: DirectEvents,
}

/// Event links of direct mode.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectEvents {
    /// Where this process publishes (a PUB socket binds here).
    #[serde(default)]
    pub bind: Option<String>,
    /// Publishers this process subscribes to.
    #[serde(default)]
    pub connect: Vec<String>,
}

impl Addresses {
    /// Reads an addresses file (JSON).
    ///
    /// # Errors
    /// When the file cannot be read or does not fit the format.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot read addresses file {}: {e}", path.display()),
                e,
            )
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("addresses file {}: {e}", path.display()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bus_addresses() {
        let a: BusAddr = "zmq://127.0.0.1:7700".parse().unwrap();
        assert_eq!(a.registry(), "tcp://127.0.0.1:7700");
        assert_eq!(a.events_out(), "tcp://127.0.0.1:7702");
        assert!("amqp://x".parse::<BusAddr>().is_err());
        assert!("zmq://h:99999".parse::<BusAddr>().is_err());
    }

    #[test]
    fn addresses_file_rejects_unknown_keys() {
        assert!(serde_json::from_str::<Addresses>(r#"{"bnd":"x"}"#).is_err());
        let a: Addresses =
            serde_json::from_str(r#"{"services":{"echo":["tcp://127.0.0.1:1"]}}"#).unwrap();
        assert_eq!(a.services["echo"].len(), 1);
    }
}
