//! Credentials on the bus: who may register, heartbeat, claim and work
//! queues (`docs/security.md`).
//!
//! Every credential is a key id and a 32-byte secret derived from the
//! bus's master secret, so the bus needs no table of them: it derives the
//! secret of any key id it is shown. Messages carry a MAC (HMAC-SHA256)
//! over a nonce the bus chose and the message itself; the secret never
//! travels. HMAC rather than ZeroMQ's CURVE: it costs microseconds per
//! registry message and nothing on the RPC path, needs no key
//! distribution for the readers of the registry, and any language with
//! an HMAC library can speak it (CURVE is for links between machines).
//!
//! ```
//! use muster_core::auth::{Credential, KeyId, MasterSecret};
//!
//! let master = MasterSecret::generate().unwrap();
//! let cred = master.credential(KeyId::Instance("echo-0-k3j9d2".into()));
//! let mac = cred.mac(&[b"nonce", b"register", b"{}"]);
//! // The bus derives the same secret from the key id alone.
//! assert!(master.secret_of(cred.key_id()).verify(&[b"nonce", b"register", b"{}"], &mac));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Environment variable holding a credential: `<key id> <hex secret>`.
pub const CREDENTIAL_ENV: &str = "MUSTER_CREDENTIAL";
/// Environment variable naming a file that holds a credential.
pub const CREDENTIAL_FILE_ENV: &str = "MUSTER_CREDENTIAL_FILE";
/// The master secret's file in a state directory.
pub const SECRET_FILE: &str = "bus.secret";

/// Why a credential could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The text is not `<key id> <64 hex digits>`.
    #[error("not a credential ({0}): expected \"<key id> <64 hex digits>\"")]
    Malformed(&'static str),
    /// A key id of no known kind.
    #[error("unknown key id {0:?} (bus, instance:<id> or user:<name>)")]
    KeyId(String),
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operating system gave no random bytes.
    #[error("no random bytes: {0}")]
    Random(getrandom::Error),
}

/// Whose credential it is, and so what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyId {
    /// The master secret itself: the host (everything, reserved names too).
    Bus,
    /// One instance started by the host: its own id and `<id>-*`.
    Instance(String),
    /// A program run by hand: any name that is not reserved.
    User(String),
}

impl KeyId {
    /// Reads `bus`, `instance:<id>` or `user:<name>`.
    ///
    /// # Errors
    /// [`AuthError::KeyId`] for anything else.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        match s.split_once(':') {
            None if s == "bus" => Ok(Self::Bus),
            Some(("instance", id)) if !id.is_empty() => Ok(Self::Instance(id.to_owned())),
            Some(("user", name)) if !name.is_empty() => Ok(Self::User(name.to_owned())),
            _ => Err(AuthError::KeyId(s.chars().take(64).collect())),
        }
    }

    /// True when this key may act as instance `id` (register it,
    /// heartbeat it, hold jobs and claims as it). Users are checked
    /// against the registry's owners by the bus instead.
    pub fn may_be(&self, id: &str) -> bool {
        match self {
            Self::Bus | Self::User(_) => true,
            Self::Instance(own) => id
                .strip_prefix(own.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-')),
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bus => f.write_str("bus"),
            Self::Instance(id) => write!(f, "instance:{id}"),
            Self::User(name) => write!(f, "user:{name}"),
        }
    }
}

/// A secret key: what a MAC is made with.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// HMAC-SHA256 over `parts`, each preceded by its length (8 bytes,
    /// big-endian), so no two lists of parts give the same input.
    pub fn mac(&self, parts: &[&[u8]]) -> String {
        hex_encode(&self.engine(parts).finalize().into_bytes())
    }

    /// Checks a MAC made by [`Secret::mac`], in constant time.
    pub fn verify(&self, parts: &[&[u8]], mac_hex: &str) -> bool {
        hex_decode(mac_hex).is_some_and(|tag| self.engine(parts).verify_slice(&tag).is_ok())
    }

    fn engine(&self, parts: &[&[u8]]) -> HmacSha256 {
        keyed(&self.0, parts)
    }
}

/// The bus's master secret, from which every credential is derived.
#[derive(Clone, Debug)]
pub struct MasterSecret(Secret);

impl MasterSecret {
    /// 32 random bytes.
    ///
    /// # Errors
    /// [`AuthError::Random`] when the system has none to give.
    pub fn generate() -> Result<Self, AuthError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(AuthError::Random)?;
        Ok(Self(Secret(b)))
    }

    /// Reads the secret in `dir/bus.secret`, creating it (mode 0600, the
    /// directory 0700) when there is none.
    ///
    /// # Errors
    /// The file cannot be read, created, or holds no secret.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthError> {
        let path = dir.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(text.trim()).ok_or(AuthError::Malformed("bus.secret")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let io = |source| AuthError::Io {
                    path: path.clone(),
                    source,
                };
                crate::fs::private_dir(dir).map_err(io)?;
                let secret = Self::generate()?;
                let text = format!("{}\n", hex_encode(&(secret.0).0));
                if crate::fs::private_create_new(&path, text.as_bytes()).map_err(io)? {
                    Ok(secret)
                } else {
                    // Made by another process meanwhile: use that one.
                    Self::load_or_create(dir)
                }
            }
            Err(source) => Err(AuthError::Io { path, source }),
        }
    }

    fn parse(hex: &str) -> Option<Self> {
        let b: [u8; 32] = hex_decode(hex)?.try_into().ok()?;
        Some(Self(Secret(b)))
    }

    /// The secret of `key` (the master itself for [`KeyId::Bus`]).
    pub fn secret_of(&self, key: &KeyId) -> Secret {
        let derive = |kind: &str, name: &str| {
            let tag = self.0.engine(&[kind.as_bytes(), name.as_bytes()]);
            Secret(tag.finalize().into_bytes().into())
        };
        match key {
            KeyId::Bus => self.0.clone(),
            KeyId::Instance(id) => derive("instance", id),
            KeyId::User(name) => derive("user", name),
        }
    }

    /// The credential of `key`.
    pub fn credential(&self, key: KeyId) -> Credential {
        Credential {
            secret: self.secret_of(&key),
            key,
        }
    }
}

/// A key id and its secret: what a process shows the bus.
#[derive(Clone, Debug)]
pub struct Credential {
    key: KeyId,
    secret: Secret,
}

impl Credential {
    /// Reads `<key id> <64 hex digits>`.
    ///
    /// # Errors
    /// [`AuthError::Malformed`] or [`AuthError::KeyId`].
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let mut parts = text.split_whitespace();
        let (Some(key), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            // A bare secret (the content of bus.secret) is the bus key.
            return match MasterSecret::parse(text.trim()) {
                Some(m) => Ok(m.credential(KeyId::Bus)),
                None => Err(AuthError::Malformed("two words")),
            };
        };
        let key = KeyId::parse(key)?;
        let secret: [u8; 32] = hex_decode(hex)
            .and_then(|b| b.try_into().ok())
            .ok_or(AuthError::Malformed("64 hex digits"))?;
        Ok(Self {
            key,
            secret: Secret(secret),
        })
    }

    /// The credential this process was given: `MUSTER_CREDENTIAL`, else
    /// the file `MUSTER_CREDENTIAL_FILE` names, else `.muster/bus.secret`
    /// in the working directory (what `muster bus` and `muster up` started
    /// there made); `None` when there is none of these.
    ///
    /// # Errors
    /// A credential that is given but not valid, or a file that cannot be
    /// read.
    pub fn from_environment() -> Result<Option<Self>, AuthError> {
        if let Ok(text) = std::env::var(CREDENTIAL_ENV)
            && !text.trim().is_empty()
        {
            return Self::parse(&text).map(Some);
        }
        let (path, required) = match std::env::var_os(CREDENTIAL_FILE_ENV) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (Path::new(".muster").join(SECRET_FILE), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map(Some),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuthError::Io { path, source }),
        }
    }

    /// The key id.
    pub fn key_id(&self) -> &KeyId {
        &self.key
    }

    /// A MAC over `parts` (see [`Secret::mac`]).
    pub fn mac(&self, parts: &[&[u8]]) -> String {
        self.secret.mac(parts)
    }

    /// `<key id> <hex secret>`: the value of `MUSTER_CREDENTIAL`.
    pub fn to_env_value(&self) -> String {
        format!("{} {}", self.key, hex_encode(&self.secret.0))
    }
}

/// HMAC-SHA256 under any key (the host's control token, for instance)
/// over length-prefixed `parts`, as hex (see [`Secret::mac`]).
pub fn mac_with(key: &[u8], parts: &[&[u8]]) -> String {
    hex_encode(&keyed(key, parts).finalize().into_bytes())
}

/// Checks a MAC made by [`mac_with`], in constant time.
pub fn verify_with(key: &[u8], parts: &[&[u8]], mac_hex: &str) -> bool {
    hex_decode(mac_hex).is_some_and(|tag| keyed(key, parts).verify_slice(&tag).is_ok())
}

fn keyed(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m
}

/// `n` random bytes as hex (nonces).
///
/// # Errors
/// [`AuthError::Random`].
pub fn random_hex(n: usize) -> Result<String, AuthError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(AuthError::Random)?;
    Ok(hex_encode(&b))
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secrets_verify_and_differ() {
        let m = MasterSecret::generate().unwrap();
        let a = m.credential(KeyId::Instance("a".into()));
        let b = m.credential(KeyId::Instance("b".into()));
        let msg: [&[u8]; 2] = [b"n", b"x"];
        let mac = a.mac(&msg);
        assert!(m.secret_of(&KeyId::Instance("a".into())).verify(&msg, &mac));
        assert!(!m.secret_of(&KeyId::Instance("b".into())).verify(&msg, &mac));
        assert_ne!(a.mac(&msg), b.mac(&msg));
        // Parts are length-prefixed: ["ab", "c"] is not ["a", "bc"].
        assert_ne!(a.mac(&[b"ab", b"c"]), a.mac(&[b"a", b"bc"]));
        assert!(!m.secret_of(a.key_id()).verify(&msg, "zz"));
    }

    #[test]
    fn credentials_round_trip_through_their_text() {
        let m = MasterSecret::generate().unwrap();
        let c = m.credential(KeyId::User("ann".into()));
        let back = Credential::parse(&c.to_env_value()).unwrap();
        assert_eq!(back.key_id(), &KeyId::User("ann".into()));
        assert_eq!(back.mac(&[b"x"]), c.mac(&[b"x"]));
        assert!(Credential::parse("user:ann nothex").is_err());
        assert!(Credential::parse("root:x 00").is_err());
    }

    #[test]
    fn instances_may_be_only_themselves() {
        let k = KeyId::Instance("echo-0-ab".into());
        assert!(k.may_be("echo-0-ab") && k.may_be("echo-0-ab-svc"));
        assert!(!k.may_be("echo-0-abc") && !k.may_be("other"));
    }

    #[test]
    fn the_secret_file_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".muster");
        let a = MasterSecret::load_or_create(&state).unwrap();
        let b = MasterSecret::load_or_create(&state).unwrap();
        let k = KeyId::Bus;
        assert_eq!(
            a.credential(k.clone()).mac(&[b"x"]),
            b.credential(k).mac(&[b"x"])
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(SECRET_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn buses_starting_together_share_one_whole_secret() {
        // Several `muster bus` processes (or tests) started in one
        // directory at once: each must read the one secret, never a file
        // another is still writing.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join(".muster");
            let macs: Vec<String> = std::thread::scope(|s| {
                let running: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| MasterSecret::load_or_create(&state)))
                    .collect();
                running
                    .into_iter()
                    .map(|t| {
                        let m = t.join().unwrap().expect("a whole secret");
                        m.credential(KeyId::Bus).mac(&[b"x"])
                    })
                    .collect()
            });
            assert!(macs.windows(2).all(|w| w[0] == w[1]), "one secret");
        }
    }
}
