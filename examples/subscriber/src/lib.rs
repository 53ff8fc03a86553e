//! A subscriber: logs `clock.tick` and `echo.*` events and counts them;
//! `subscriber.count` answers how many it has seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use muster::prelude::*;

#[derive(Clone, Default)]
struct Seen(Arc<AtomicU64>);

/// The service, for `main` and for tests.
pub fn service() -> Service {
    let seen = Seen::default();
    let on_event = {
        let seen = seen.clone();
        move |header: Header, Args(payload): Args<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                let n = seen.0.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(topic = ?header.topic, %payload, n, "event");
                Ok::<_, RpcError>(())
            }
        }
    };
    let count = move || {
        let seen = seen.clone();
        async move { seen.0.load(Ordering::Relaxed) }
    };
    Service::new("subscriber")
        .version(env!("CARGO_PKG_VERSION"))
        .subscribe("clock.tick", on_event.clone())
        .subscribe("echo.>", on_event)
        .rpc("count", count)
}
