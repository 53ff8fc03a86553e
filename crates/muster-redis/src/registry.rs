//! The registry on Redis: a sorted set of instance ids scored by expiry
//! (ms since the epoch) and one key per instance holding its description
//! with the same expiry. Instances refresh both every second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use muster_core::Error;
use muster_core::registry::InstanceInfo;

use crate::{Inner, now_ms, unavailable};

/// How long a caller trusts its copy of the registry.
const FRESH_FOR: Duration = Duration::from_millis(500);

/// A caller's cached copy of the registry (to route and to answer -32601
/// without a round trip per call).
#[derive(Debug, Default)]
pub(crate) struct View {
    cached: Mutex<Option<(Instant, Vec<InstanceInfo>)>>,
}

impl View {
    fn fresh(&self) -> Option<Vec<InstanceInfo>> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, v)| v.clone())
    }

    fn store(&self, v: Vec<InstanceInfo>) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), v));
    }
}

/// Every live instance.
pub(crate) async fn list(inner: &Inner) -> Result<Vec<InstanceInfo>, Error> {
    let mut conn = inner.conn.clone();
    let now = now_ms();
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(inner.keys.instances())
        .arg(now)
        .arg("+inf")
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable("list instances", &e))?;
    let mut out = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        let keys: Vec<String> = ids.iter().map(|id| inner.keys.instance(id)).collect();
        let infos: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("list instances", &e))?;
        for info in infos.into_iter().flatten() {
            match serde_json::from_str::<InstanceInfo>(&info) {
                Ok(i) => out.push(i),
                Err(e) => tracing::warn!(error = %e, "unreadable instance entry in Redis; skipped"),
            }
        }
    }
    out.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    inner.view.store(out.clone());
    Ok(out)
}

/// The registry, from the cache when it is fresh.
pub(crate) async fn routes(inner: &Inner) -> Result<Vec<InstanceInfo>, Error> {
    match inner.view.fresh() {
        Some(v) => Ok(v),
        None => list(inner).await,
    }
}

/// Adds or refreshes an instance.
pub(crate) async fn refresh(inner: &Inner, info_json: &str, id: &str) -> Result<(), Error> {
    let ttl_ms = u64::try_from(inner.options.ttl.as_millis()).unwrap_or(3000);
    let now = now_ms();
    let mut conn = inner.conn.clone();
    redis::pipe()
        .cmd("SET")
        .arg(inner.keys.instance(id))
        .arg(info_json)
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .cmd("ZADD")
        .arg(inner.keys.instances())
        .arg(now + ttl_ms)
        .arg(id)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(inner.keys.instances())
        .arg("-inf")
        .arg(now)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| unavailable("register", &e))
}

/// Removes an instance.
pub(crate) async fn remove(inner: &Inner, id: &str) -> Result<(), Error> {
    let mut conn = inner.conn.clone();
    redis::pipe()
        .cmd("DEL")
        .arg(inner.keys.instance(id))
        .ignore()
        .cmd("ZREM")
        .arg(inner.keys.instances())
        .arg(id)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| unavailable("unregister", &e))
}
