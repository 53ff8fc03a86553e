//! Where an instance's RPC endpoint listens, and the address it gives the
//! registry for callers to reach it at.
//!
//! Behind NAT or in a container the two differ: the endpoint binds
//! `0.0.0.0` on a port of a range the container publishes, and is
//! registered as `127.0.0.1` (or the machine's address) on that same port,
//! where the published port leads (`docs/deploy.md`).

use std::str::FromStr;

use muster_core::{Error, ErrorKind};

/// Ports an instance's RPC endpoint may bind, first to last inclusive
/// (`MUSTER_RPC_PORTS=7710-7739`, `[host] rpc_ports`): the first free one
/// is taken.
///
/// ```
/// let r: muster_zmq::PortRange = "7710-7739".parse().unwrap();
/// assert_eq!((r.first, r.last), (7710, 7739));
/// assert_eq!(r.to_string(), "7710-7739");
/// assert!("7739-7710".parse::<muster_zmq::PortRange>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port tried.
    pub first: u16,
    /// The last port tried.
    pub last: u16,
}

/// Environment variable giving the ports RPC endpoints bind.
pub const RPC_PORTS_ENV: &str = "MUSTER_RPC_PORTS";
/// Environment variable giving the host registered for RPC endpoints.
pub const ADVERTISE_HOST_ENV: &str = "MUSTER_ADVERTISE_HOST";

impl FromStr for PortRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Config,
                format!("bad port range {s:?}: {why} (expected FIRST-LAST, such as 7710-7739)"),
            )
        };
        let (first, last) = s.trim().split_once('-').unwrap_or((s.trim(), s.trim()));
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("a port is a number from 1 to 65535")),
            Ok(n) => Ok(n),
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(bad("the first port is above the last"));
        }
        Ok(Self { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The endpoints to try binding, in order: every port of the range, or
/// any free port.
pub(crate) fn candidates(bind_host: &str, ports: Option<PortRange>) -> Vec<String> {
    match ports {
        None => vec![format!("tcp://{bind_host}:0")],
        Some(r) => (r.first..=r.last)
            .map(|p| format!("tcp://{bind_host}:{p}"))
            .collect(),
    }
}

/// What callers are told: `bound` with its host replaced by `advertise`.
pub(crate) fn advertised(bound: &str, advertise: Option<&str>) -> String {
    match (advertise, bound.strip_prefix("tcp://")) {
        (Some(host), Some(rest)) => match rest.rsplit_once(':') {
            Some((_, port)) => format!("tcp://{host}:{port}"),
            None => bound.to_owned(),
        },
        _ => bound.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_parses_and_refuses_what_is_not_one() {
        assert_eq!(
            "7710".parse::<PortRange>().unwrap(),
            PortRange {
                first: 7710,
                last: 7710
            }
        );
        for bad in ["", "0-10", "10-", "a-b", "70000", "20-10"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_advertised_address_keeps_the_bound_port() {
        assert_eq!(
            advertised("tcp://0.0.0.0:7712", Some("127.0.0.1")),
            "tcp://127.0.0.1:7712"
        );
        assert_eq!(
            advertised("tcp://10.0.0.1:7712", None),
            "tcp://10.0.0.1:7712"
        );
        assert_eq!(
            candidates("0.0.0.0", Some("7710-7711".parse().unwrap())),
            ["tcp://0.0.0.0:7710", "tcp://0.0.0.0:7711"]
        );
    }
}
