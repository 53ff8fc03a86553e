//! Durable event subscriptions on Redis: a group is a field of the hash
//! `<p>:durable` (its patterns and retention) and keeps its events in the
//! work-queue stream of `durable.<group>` (`<p>:q:durable.<group>`), read
//! by its members through the queue consumer (consumer group, acks,
//! take-over of a dead member's entries).
//!
//! Every publish runs one script that publishes and, in the same atomic
//! step, appends the event to the stream of each group whose patterns
//! match: a group declared before a publish keeps that event, with no
//! window in which a publisher does not know of it. The count bound is
//! `XADD MAXLEN ~` and the age bound `XTRIM MINID ~` (both approximate by
//! up to a stream node, about 100 entries); Redis streams have no bytes
//! bound, so `max_bytes` is not enforced here (the server's `maxmemory`
//! is).

use std::sync::{Arc, LazyLock};

use muster_core::Error;
use muster_core::durable::{DurableGroup, EventJobs};
use muster_core::queue::ConsumeOptions;
use muster_core::queue::consumer::Consuming;
use muster_core::transport::EventSink;

use crate::{Inner, unavailable};

/// `KEYS[1]` the event channel, `KEYS[2]` the groups hash; `ARGV[1]` the
/// topic, `ARGV[2]` the event blob. Returns `PUBLISH`'s count. Topic
/// matching is muster's (`*` one token, `>` one or more). Bounds are
/// written as whole numbers (`%d`: Lua prints large ones in exponent
/// form), an age bound older than the epoch trims nothing, and a group's
/// own commands run under `pcall`: one odd group never fails a publish.
const PUBLISH_SCRIPT: &str = r"
local topic, blob = ARGV[1], ARGV[2]
local n = redis.call('PUBLISH', KEYS[1], blob)
local groups = redis.call('HVALS', KEYS[2])
if #groups == 0 then return n end
local tokens = {}
for tok in string.gmatch(topic, '[^.]+') do tokens[#tokens + 1] = tok end
local function matches(p)
  local i = 0
  for tok in string.gmatch(p, '[^.]+') do
    i = i + 1
    if tok == '>' then return #tokens >= i end
    if tokens[i] == nil then return false end
    if tok ~= '*' and tok ~= tokens[i] then return false end
  end
  return i == #tokens
end
local now = nil
for _, raw in ipairs(groups) do
  local ok, g = pcall(cjson.decode, raw)
  if ok then
    for _, p in ipairs(g.patterns) do
      if matches(p) then
        redis.pcall('XADD', g.stream, 'MAXLEN', '~', string.format('%d', g.max_events), '*', 'body', blob)
        if not now then
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        local oldest = now - g.max_age_ms
        if oldest > 0 then
          redis.pcall('XTRIM', g.stream, 'MINID', '~', string.format('%d', oldest))
        end
        break
      end
    end
  end
end
return n
";

static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUBLISH_SCRIPT));

/// Publishes `blob` on `channel`, keeping it for the groups that want
/// `topic`.
pub(crate) async fn publish(
    inner: &Inner,
    channel: &str,
    topic: &str,
    blob: &[u8],
) -> Result<(), Error> {
    let mut conn = inner.conn.clone();
    PUBLISH
        .key(channel)
        .key(inner.keys.durable_groups())
        .arg(topic)
        .arg(blob)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| unavailable("publish", &e))
}

/// Largest bound written for the script (Lua numbers are doubles, and
/// print in exponent form past this).
const LUA_MAX: u64 = 1 << 50;

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    group: &DurableGroup,
    options: ConsumeOptions,
    sink: Arc<dyn EventSink>,
) -> Result<Consuming, Error> {
    group.check()?;
    let queue = group.queue();
    let r = &group.retention;
    // The group as the publish script reads it: whole numbers a Lua
    // number prints exactly.
    let def = serde_json::json!({
        "stream": inner.keys.queue(&queue),
        "patterns": group.patterns,
        "max_events": r.max_events.min(LUA_MAX),
        "max_age_ms": u64::try_from(r.max_age.as_millis()).unwrap_or(u64::MAX).min(LUA_MAX),
    })
    .to_string();
    let mut conn = inner.conn.clone();
    // Declared (the latest declaration wins) before the member reads:
    // from here on every publish keeps the group's events.
    redis::cmd("HSET")
        .arg(inner.keys.durable_groups())
        .arg(&group.name)
        .arg(def)
        .query_async::<i64>(&mut conn)
        .await
        .map_err(|e| unavailable("declare the durable group", &e))?;
    crate::queue::consume(inner, &queue, options, Arc::new(EventJobs::new(sink))).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_script_parses_as_lua_would_be_checked_by_redis() {
        // The script is sent as is; this catches an edit that leaves it
        // without its entry points.
        assert!(super::PUBLISH_SCRIPT.contains("redis.call('PUBLISH', KEYS[1], blob)"));
        assert!(super::PUBLISH_SCRIPT.contains("return n"));
    }
}
