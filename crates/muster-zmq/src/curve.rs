//! CURVE on the embedded bus: what makes it safe to reach from other
//! machines (`docs/fleet.md`, "The embedded bus across machines").
//!
//! A fleet's keys live in a keys directory that `muster keys` writes:
//!
//! | file | who has it | what it is |
//! |---|---|---|
//! | `fleet.pub` | everyone | the public key every server of the fleet proves (the bus, every instance's RPC endpoint) |
//! | `fleet.key` | hosts | its secret: a process holding it may serve, and is admitted as a client |
//! | `client.key` | clients run by hand | a member's own key pair, when it is not a host |
//! | `authorized/*.pub` | hosts | client keys admitted besides the fleet's own |
//!
//! One server key for the whole fleet, not one per host: a caller connects
//! straight to an instance's endpoint, which it learns from the registry,
//! and would otherwise need that host's key beside it. A host holds the
//! fleet's secret anyway (its instances serve), so the key shared among
//! hosts is no weaker than the hosts; an operator's client gets a key of
//! its own, which a host admits when it is in `authorized/`, and which
//! cannot serve. The directory is read again at each handshake, so removing
//! a file from `authorized/` refuses that key's next connection.
//!
//! ```
//! # fn demo() -> Result<(), muster_zmq::CurveError> {
//! let dir = std::env::temp_dir().join(format!("muster-keys-doc-{}", std::process::id()));
//! muster_zmq::curve::write_fleet(&dir)?;
//! let curve = muster_zmq::Curve::load(&dir)?;
//! assert!(curve.can_serve());
//! # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
//! # demo().unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omq_tokio::{CurveKeypair, CurvePublicKey, CurveSecretKey, CurveServerOptions, Options};

/// Environment variable naming a process's keys directory.
pub const CURVE_ENV: &str = "MUSTER_CURVE";
/// Environment variable that lets plain TCP listen beyond loopback
/// (`1`): the explicit "I know this network" of `docs/fleet.md`.
pub const PLAIN_TCP_ENV: &str = "MUSTER_PLAIN_TCP";

/// The fleet's public key file.
pub const FLEET_PUB: &str = "fleet.pub";
/// The fleet's secret key file.
pub const FLEET_KEY: &str = "fleet.key";
/// A member's own key pair.
pub const CLIENT_KEY: &str = "client.key";
/// A member's public key, to copy into the hosts' `authorized/`.
pub const CLIENT_PUB: &str = "client.pub";
/// The directory of admitted client keys.
pub const AUTHORIZED: &str = "authorized";

/// Refusals are logged at most this often (with how many were not), so a
/// peer knocking in a loop cannot flood the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Why a keys directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CurveError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file that does not hold a Z85 key of 32 bytes.
    #[error("{}: not a CURVE key (expected 40 Z85 characters on one line)", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// Neither `client.key` nor `fleet.key`: nothing to connect with.
    #[error(
        "{}: no {CLIENT_KEY} or {FLEET_KEY} (make one with `muster keys client` or `muster keys init`)",
        dir.display()
    )]
    NoKeyPair {
        /// The keys directory.
        dir: PathBuf,
    },
    /// `write_fleet` or `write_client` would overwrite a key.
    #[error("{} exists; keys are never overwritten", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

impl From<CurveError> for muster_core::Error {
    fn from(e: CurveError) -> Self {
        muster_core::Error::with_source(muster_core::ErrorKind::Config, format!("CURVE: {e}"), e)
    }
}

/// A process's CURVE keys (see the module documentation).
#[derive(Clone)]
pub struct Curve {
    dir: PathBuf,
    fleet: CurvePublicKey,
    server: Option<CurveKeypair>,
    client: CurveKeypair,
    refusals: Arc<Refusals>,
}

impl std::fmt::Debug for Curve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Curve")
            .field("dir", &self.dir)
            .field("fleet", &self.fleet.to_z85())
            .field("client", &self.client.public.to_z85())
            .field("can_serve", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Refusals {
    count: AtomicU64,
    /// When one was last logged, and how many since went unlogged.
    logged: Mutex<(Option<Instant>, u64)>,
}

impl Curve {
    /// Reads the keys directory `dir`.
    ///
    /// # Errors
    /// A missing `fleet.pub`, no key pair, or a file that is not a key.
    pub fn load(dir: &Path) -> Result<Self, CurveError> {
        let fleet = CurvePublicKey::from_bytes(read_key(&dir.join(FLEET_PUB))?);
        let server = match read_key(&dir.join(FLEET_KEY)) {
            Ok(secret) => Some(keypair(secret)),
            Err(CurveError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e),
        };
        let client = match read_key(&dir.join(CLIENT_KEY)) {
            Ok(secret) => keypair(secret),
            Err(CurveError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                server.clone().ok_or_else(|| CurveError::NoKeyPair {
                    dir: dir.to_owned(),
                })?
            }
            Err(e) => return Err(e),
        };
        if let Some(s) = &server
            && s.public != fleet
        {
            return Err(CurveError::BadKey {
                path: dir.join(FLEET_PUB),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            fleet,
            server,
            client,
            refusals: Arc::new(Refusals {
                count: AtomicU64::new(0),
                logged: Mutex::new((None, 0)),
            }),
        })
    }

    /// The keys directory named by `MUSTER_CURVE`, if it is set.
    ///
    /// # Errors
    /// As [`Curve::load`].
    pub fn from_environment() -> Result<Option<Self>, CurveError> {
        match std::env::var_os(CURVE_ENV) {
            Some(dir) if !dir.is_empty() => Self::load(Path::new(&dir)).map(Some),
            _ => Ok(None),
        }
    }

    /// The keys directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fleet's public key (Z85).
    pub fn fleet_key(&self) -> String {
        self.fleet.to_z85()
    }

    /// The public key this process connects with (Z85).
    pub fn client_key(&self) -> String {
        self.client.public.to_z85()
    }

    /// True when this process holds the fleet's secret and so may serve.
    pub fn can_serve(&self) -> bool {
        self.server.is_some()
    }

    /// Handshakes refused so far by this process's servers.
    pub fn refusals(&self) -> u64 {
        self.refusals.count.load(Ordering::Relaxed)
    }

    /// `options` for a socket that binds: the fleet's server key, and
    /// admission of the fleet's key and of `authorized/`.
    pub(crate) fn server_options(&self, options: Options) -> Result<Options, muster_core::Error> {
        let Some(server) = self.server.clone() else {
            return Err(muster_core::Error::new(
                muster_core::ErrorKind::Config,
                format!(
                    "CURVE: {} has no {FLEET_KEY}, so this process cannot listen (a client key connects only)",
                    self.dir.display()
                ),
            ));
        };
        let me = self.clone();
        let admission = CurveServerOptions::default().authenticator(move |peer| me.admits(peer));
        Ok(options.curve_server_with_options(server, admission))
    }

    /// `options` for a socket that connects: this member's key, and the
    /// fleet's public key, which the server must prove.
    pub(crate) fn client_options(&self, options: Options) -> Options {
        options.curve_client(self.client.clone(), self.fleet)
    }

    fn admits(&self, peer: &omq_tokio::MechanismPeerInfo) -> bool {
        let key = CurvePublicKey::from_bytes(peer.public_key);
        if key == self.fleet || self.authorized(&key) {
            return true;
        }
        self.refused(
            &key,
            peer.peer_address.as_deref().unwrap_or("unknown address"),
        );
        false
    }

    /// True when `authorized/` holds `key`. Read at each handshake:
    /// handshakes are rare (connections are long-lived), and a removed
    /// file then takes effect without a restart.
    fn authorized(&self, key: &CurvePublicKey) -> bool {
        let Ok(entries) = std::fs::read_dir(self.dir.join(AUTHORIZED)) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.path().extension().is_some_and(|x| x == "pub")
                && read_key(&e.path()).is_ok_and(|k| CurvePublicKey::from_bytes(k) == *key)
        })
    }

    fn refused(&self, key: &CurvePublicKey, address: &str) {
        self.refusals.count.fetch_add(1, Ordering::Relaxed);
        let mut logged = self
            .refusals
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if logged.0.is_some_and(|at| now - at < REFUSAL_LOG_EVERY) {
            logged.1 += 1;
            return;
        }
        tracing::warn!(
            peer = address,
            key = %key.to_z85(),
            unlogged_before = logged.1,
            "CURVE: refused a connection with a key that is not the fleet's nor in authorized/"
        );
        *logged = (Some(now), 0);
    }
}

/// True when `host` is a loopback address (or `localhost`): where plain
/// TCP may listen without being asked to.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// True when `MUSTER_PLAIN_TCP=1`.
pub fn plain_tcp_from_environment() -> bool {
    std::env::var(PLAIN_TCP_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Refuses to listen on `host` in the clear beyond loopback unless the
/// user said so (`plain_tcp`).
pub(crate) fn check_listen(
    what: &str,
    host: &str,
    curve: Option<&Curve>,
    plain_tcp: bool,
) -> Result<(), muster_core::Error> {
    if curve.is_some() || plain_tcp || is_loopback(host) {
        return Ok(());
    }
    Err(muster_core::Error::new(
        muster_core::ErrorKind::Config,
        format!(
            "{what} would listen on {host} without CURVE: give it the fleet's keys ({CURVE_ENV}=DIR, [host] curve) or, on a network you trust, allow plain TCP explicitly ({PLAIN_TCP_ENV}=1, [host] plain_tcp = true)"
        ),
    ))
}

/// Makes a fleet's keys directory: `fleet.key`, `fleet.pub` and an empty
/// `authorized/`. Returns the fleet's public key (Z85).
///
/// # Errors
/// A key that exists already, or a file that cannot be written.
pub fn write_fleet(dir: &Path) -> Result<String, CurveError> {
    let pair = CurveKeypair::generate();
    make_dir(dir)?;
    make_dir(&dir.join(AUTHORIZED))?;
    write_new(&dir.join(FLEET_KEY), &pair.secret.to_z85(), true)?;
    write_new(&dir.join(FLEET_PUB), &pair.public.to_z85(), false)?;
    Ok(pair.public.to_z85())
}

/// Makes a member's keys directory `dir` (`client.key`, `client.pub`, and
/// the fleet's `fleet.pub` copied from `fleet`), and admits it: its
/// public key goes to `<fleet>/authorized/<name>.pub`. Returns the
/// member's public key (Z85).
///
/// # Errors
/// A key that exists already, a fleet directory without `fleet.pub`, a
/// file that cannot be written.
pub fn write_client(dir: &Path, fleet: &Path, name: &str) -> Result<String, CurveError> {
    let fleet_pub = read_key(&fleet.join(FLEET_PUB))?;
    let pair = CurveKeypair::generate();
    make_dir(dir)?;
    write_new(&dir.join(CLIENT_KEY), &pair.secret.to_z85(), true)?;
    write_new(&dir.join(CLIENT_PUB), &pair.public.to_z85(), false)?;
    let fleet_copy = dir.join(FLEET_PUB);
    if !fleet_copy.exists() {
        write_new(
            &fleet_copy,
            &CurvePublicKey::from_bytes(fleet_pub).to_z85(),
            false,
        )?;
    }
    make_dir(&fleet.join(AUTHORIZED))?;
    write_new(
        &fleet.join(AUTHORIZED).join(format!("{name}.pub")),
        &pair.public.to_z85(),
        false,
    )?;
    Ok(pair.public.to_z85())
}

fn keypair(secret: [u8; 32]) -> CurveKeypair {
    let secret = CurveSecretKey::from_bytes(secret);
    CurveKeypair {
        public: secret.derive_public(),
        secret,
    }
}

/// The key in a key file: its first line that is not blank or a `#`
/// comment, in Z85.
fn read_key(path: &Path) -> Result<[u8; 32], CurveError> {
    let text = std::fs::read_to_string(path).map_err(|source| CurveError::Io {
        path: path.to_owned(),
        source,
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    // Public and secret keys share the encoding.
    CurvePublicKey::from_z85(line)
        .map(|k| *k.as_bytes())
        .map_err(|_| CurveError::BadKey {
            path: path.to_owned(),
        })
}

fn make_dir(dir: &Path) -> Result<(), CurveError> {
    muster_core::fs::private_dir(dir).map_err(|source| CurveError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn write_new(path: &Path, key: &str, secret: bool) -> Result<(), CurveError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CurveError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CurveError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
    let what = if secret { "secret" } else { "public" };
    writeln!(file, "# muster CURVE {what} key (Z85)\n{key}").map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "muster-curve-{tag}-{}-{}",
            std::process::id(),
            muster_core::id::random_u64()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_fleet_and_a_client_load_and_a_key_is_never_overwritten() {
        let fleet = temp("fleet");
        let public = write_fleet(&fleet).unwrap();
        let host = Curve::load(&fleet).unwrap();
        assert!(host.can_serve());
        assert_eq!(host.fleet.to_z85(), public);
        assert!(matches!(
            write_fleet(&fleet),
            Err(CurveError::Exists { .. })
        ));

        let me = temp("client");
        let mine = write_client(&me, &fleet, "alice").unwrap();
        let client = Curve::load(&me).unwrap();
        assert!(!client.can_serve());
        assert_eq!(client.fleet, host.fleet);
        assert!(host.authorized(&client.client.public));
        std::fs::remove_file(fleet.join(AUTHORIZED).join("alice.pub")).unwrap();
        assert!(!host.authorized(&client.client.public), "{mine} revoked");
        assert!(client.server_options(Options::default()).is_err());
        for d in [fleet, me] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn bad_key_files_are_named() {
        let dir = temp("bad");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(Curve::load(&dir), Err(CurveError::Io { .. })));
        std::fs::write(dir.join(FLEET_PUB), "not a key\n").unwrap();
        assert!(matches!(Curve::load(&dir), Err(CurveError::BadKey { .. })));
        let pair = CurveKeypair::generate();
        std::fs::write(dir.join(FLEET_PUB), pair.public.to_z85()).unwrap();
        assert!(matches!(
            Curve::load(&dir),
            Err(CurveError::NoKeyPair { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn plain_tcp_listens_on_loopback_only_unless_asked() {
        assert!(check_listen("bus", "127.0.0.1", None, false).is_ok());
        assert!(check_listen("bus", "localhost", None, false).is_ok());
        assert!(check_listen("bus", "::1", None, false).is_ok());
        assert!(check_listen("bus", "0.0.0.0", None, false).is_err());
        assert!(check_listen("bus", "10.1.2.3", None, false).is_err());
        assert!(check_listen("bus", "10.1.2.3", None, true).is_ok());
    }
}
