//! The dashboard across a fleet: `/api/top` adds the other hosts of the
//! bus (their control service's `top`, with the fleet's token, which this
//! host holds), each transaction tagged with its host, and `/api/ctl`
//! forwards a restart or stop to the host a row belongs to
//! (`docs/fleet.md`).

use futures_util::future::join_all;
use serde_json::Value;

use super::AppState;
use crate::control::{ControlRequest, Controller, HostRef};

/// How long the other hosts get to answer a refresh: a host that does not
/// is shown as such, and the page goes on with the others.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// `transactions` of `host`, each with its `host`.
pub(super) fn tagged(host: &str, transactions: Value) -> Vec<Value> {
    transactions
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut t| {
            if let Some(o) = t.as_object_mut() {
                o.insert("host".into(), host.into());
            }
            t
        })
        .collect()
}

/// The other hosts on the bus (not this one).
async fn others(s: &AppState) -> (Controller, Vec<HostRef>) {
    let controller = Controller::new(s.client.clone(), &s.token);
    let hosts = tokio::time::timeout(ANSWER_WITHIN, controller.hosts())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
        .into_iter()
        .filter(|h| h.name != *s.host)
        .collect();
    (controller, hosts)
}

/// The `top` of every other host, tagged; a host that does not answer in
/// time is one entry with its `error`.
pub(super) async fn other_tops(s: &AppState) -> Vec<Value> {
    let (controller, hosts) = others(s).await;
    let asks = hosts.iter().map(|h| {
        let c = controller.on(h);
        async move {
            let answer = tokio::time::timeout(
                ANSWER_WITHIN,
                c.call::<Value>("top", ControlRequest::default()),
            )
            .await;
            match answer {
                Ok(Ok(top)) => tagged(&h.name, top),
                Ok(Err(e)) => vec![serde_json::json!({"host": h.name, "error": e.message})],
                Err(_) => vec![serde_json::json!({"host": h.name, "error": "no answer"})],
            }
        }
    });
    join_all(asks).await.into_iter().flatten().collect()
}

/// A restart or stop for another host of the fleet, through its control
/// service; `None` when no host of that name is on the bus.
pub(super) async fn forward(
    s: &AppState,
    host: &str,
    action: &str,
    request: ControlRequest,
) -> Option<Result<Value, muster::RpcError>> {
    let (controller, hosts) = others(s).await;
    let target = hosts.iter().find(|h| h.name == host)?;
    Some(controller.on(target).call::<Value>(action, request).await)
}
