//! Claims on a JetStream key-value bucket (`<p>-claims`, whose entries
//! live a day): the value of a
//! key is `holder \n expires_ms`. The first writer of a key wins (`create`
//! fails for the others); an expired claim is taken over with a write
//! that names the revision it read, so two takers cannot both win.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use muster_core::{Error, ErrorKind};

use crate::{Inner, now_ms, unavailable};

async fn bucket(inner: &Inner) -> Result<&kv::Store, Error> {
    inner
        .claims
        .get_or_try_init(|| async {
            let name = inner.subjects.claims_bucket();
            key_value(inner, &name, Duration::from_secs(86_400)).await
        })
        .await
}

/// Opens the key-value bucket `name`, making it first if need be. It is
/// made as the stream a bucket is (`KV_<name>` on `$KV.<name>.>`, one
/// value per key, roll-ups allowed, direct gets) rather than with
/// `create_key_value`: that asks for the account's details first, in a
/// form nats-server 2.9 (Debian 12's) does not answer, while a stream is
/// made the same way on every 2.x server.
pub(crate) async fn key_value(
    inner: &Inner,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, Error> {
    if let Ok(store) = inner.jetstream.get_key_value(name).await {
        return Ok(store);
    }
    let made = inner
        .jetstream
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..stream::Config::default()
        })
        .await;
    // Made here, or by another instance at the same moment: open it.
    inner
        .jetstream
        .get_key_value(name)
        .await
        .map_err(|e| match made {
            Err(made) => unavailable(&format!("create the JetStream bucket {name}"), &made),
            Ok(_) => unavailable(&format!("open the JetStream bucket {name}"), &e),
        })
}

/// A key-value key for any claim key: letters, digits, `-_/.=` kept, every
/// other byte written `=HH`.
fn kv_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn value(holder: &str, ttl: Duration) -> bytes::Bytes {
    let expires = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    format!("{holder}\n{expires}").into()
}

pub(crate) async fn claim(
    inner: &Inner,
    key: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, Error> {
    let store = bucket(inner).await?;
    let key = kv_key(key);
    // A race lost on a write is decided by reading again; three rounds
    // are plenty (each loss means someone else's write landed).
    for _ in 0..3 {
        let entry = store
            .entry(&key)
            .await
            .map_err(|e| unavailable("read a claim", &e))?;
        let current = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
        let Some(current) = current else {
            match store.create(&key, value(holder, ttl)).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(unavailable("write a claim", &e)),
            }
        };
        let text = String::from_utf8_lossy(&current.value);
        let (owner, expires) = text.split_once('\n').unwrap_or((&text, "0"));
        if owner == holder {
            return Ok(true);
        }
        if expires.parse::<u64>().unwrap_or(0) > now_ms() {
            return Ok(false);
        }
        match store
            .update(&key, value(holder, ttl), current.revision)
            .await
        {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(unavailable("write a claim", &e)),
        }
    }
    Err(Error::new(
        ErrorKind::Unavailable,
        format!("claim {key:?}: lost three races in a row"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_not_refused() {
        assert_eq!(kv_key("svc/job.0900"), "svc/job.0900");
        assert_eq!(kv_key("a:b c"), "a=3Ab=20c");
    }
}
