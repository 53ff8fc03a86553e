//! Random identifiers for instances, requests and transactions, from the
//! standard library's randomly seeded hasher (no RNG dependency).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's id, asked of the OS once: `getpid` is a system call
/// each time (glibc no longer caches it), and an id is made per request.
/// A child that forks without exec keeps its parent's value; the time
/// mixed in below still tells their ids apart.
fn pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// A random 64-bit number (not for secrets: use the OS for those).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(pid());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

/// `len` random characters from `alphabet`.
pub fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut out = String::with_capacity(len);
    let mut bits = random_u64();
    let mut left = 64;
    while out.len() < len {
        if left < 8 {
            bits = random_u64();
            left = 64;
        }
        let i = (bits & 0xff) as usize % alphabet.len();
        out.push(alphabet[i] as char);
        bits >>= 8;
        left -= 8;
    }
    out
}

/// A short lowercase id for instances and callers, e.g. `k3j9d2xq`.
pub fn short_id() -> String {
    random_string(8, b"abcdefghijklmnopqrstuvwxyz0123456789")
}

/// A transaction id: 20 characters `A-Z0-9`.
pub fn transaction_id() -> String {
    random_string(20, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = transaction_id();
        assert_eq!(t.len(), 20);
        assert!(
            t.bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_ne!(short_id(), short_id());
    }
}
