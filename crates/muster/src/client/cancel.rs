//! Telling an instance that its caller gave up a call (`docs/tracing.md`,
//! "Cancellation when the caller gives up").

use super::{Client, split_target};
use crate::RpcError;
use crate::transport::SharedTransport;
use crate::wire::{Envelope, Header, Kind};

/// Tells the instance running a call that its caller gave up, when the
/// call's future is dropped before its answer. The notice is sent from a
/// task of its own (a drop cannot wait); one that comes after the
/// instance's own deadline finds nothing to stop. Holding borrowed names
/// keeps the common case, a call that ends, free of allocations.
pub(super) struct CancelOnDrop<'a> {
    client: &'a Client,
    target: &'a str,
    /// The call's number; `None` once disarmed.
    n: Option<u64>,
}

impl<'a> CancelOnDrop<'a> {
    pub(super) fn new(client: &'a Client, target: &'a str, n: u64) -> Self {
        Self {
            client,
            target,
            n: Some(n),
        }
    }

    /// Runs the call to its end, or until `cancel` fires: then sends the
    /// notice (waiting for the bus to take it) and answers the timeout
    /// error.
    pub(super) async fn until_cancelled<T>(
        mut self,
        cancel: Option<tokio_util::sync::CancellationToken>,
        call: impl std::future::Future<Output = Result<T, RpcError>>,
    ) -> Result<T, RpcError> {
        let outcome = match cancel {
            None => call.await,
            Some(token) => tokio::select! {
                outcome = call => outcome,
                () = token.cancelled() => {
                    if let Some(send) = self.notice() {
                        send.await;
                    }
                    Err(RpcError::timeout(format!("{}: cancelled by the caller", self.target)))
                }
            },
        };
        // Ended, one way or the other: nothing more to cancel.
        self.n = None;
        outcome
    }

    /// Sending the cancel notice of the call, once (`None` once sent or
    /// ended).
    fn notice(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let n = self.n.take()?;
        let (service, _) = split_target(self.target).ok()?;
        let topic = muster_core::registry::cancel_topic(service);
        let body = serde_json::json!({ "key": self.client.call_key(n) }).to_string();
        let notice = Envelope::new(Header::new(Kind::Event).with_topic(topic), body);
        let transport: SharedTransport = self.client.transport.clone();
        Some(async move {
            if let Err(e) = transport.publish(notice).await {
                tracing::debug!(error = %e, "cancel notice not sent");
            }
        })
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.n.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(send) = self.notice() {
            runtime.spawn(send);
        }
    }
}
