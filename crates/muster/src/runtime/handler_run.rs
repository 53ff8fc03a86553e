//! How one handler runs: a panic becomes a -32603 reply, and the handler
//! is dropped at its caller's deadline or when its caller gives up
//! (`docs/tracing.md`, "Cancellation"), counted as cancelled.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use serde_json::value::RawValue;

use crate::RpcError;
use crate::transport::BoxFuture;

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Runs a handler future, turning a panic into a -32603 reply.
pub(super) async fn guarded(
    fut: BoxFuture<'static, Result<Box<RawValue>, RpcError>>,
) -> Result<Box<RawValue>, RpcError> {
    unpanicked(AssertUnwindSafe(fut).catch_unwind().await)
}

type Handled = Result<Result<Box<RawValue>, RpcError>, Box<dyn std::any::Any + Send>>;

/// A handler's outcome, a panic turned into a -32603 reply.
fn unpanicked(outcome: Handled) -> Result<Box<RawValue>, RpcError> {
    outcome.unwrap_or_else(|p| {
        let msg = panic_message(p.as_ref());
        tracing::error!(panic = %msg, "handler panicked");
        Err(RpcError::internal(format!("handler panicked: {msg}")))
    })
}

/// Runs a handler until the caller's deadline: one whose deadline has
/// passed is not started, and one still running at it is dropped (its
/// nested calls, made with the remaining budget, end with it); both answer
/// the timeout error and count as cancelled, as does a handler that ends
/// with an error at the deadline (its nested call timed out first). The caller has given up by
/// then, so the answer is for the record. A handler section that must not
/// be cut short runs under [`crate::uninterruptible`].
pub(super) async fn within_deadline(
    fut: BoxFuture<'static, Result<Box<RawValue>, RpcError>>,
    deadline: Option<Instant>,
    caller: Option<(String, Arc<super::in_flight::InFlight>)>,
    stats: &crate::stats::MethodStats,
) -> Result<Box<RawValue>, RpcError> {
    if deadline.is_none() && caller.is_none() {
        return guarded(fut).await;
    }
    if deadline.is_some_and(|d| d <= Instant::now()) {
        stats.cancelled();
        return Err(RpcError::timeout(
            "the caller's deadline passed before the request started",
        ));
    }
    // Most handlers answer on their first poll: nothing can cancel them
    // then, so neither a timer nor an entry in the book is made for them
    // (both cost a call, `docs/benchmarks.md`). The rest go on, boxed, in
    // `until_stopped`.
    let mut fut = AssertUnwindSafe(fut).catch_unwind();
    let outcome = match futures_util::poll!(&mut fut) {
        std::task::Poll::Ready(outcome) => unpanicked(outcome),
        std::task::Poll::Pending => Box::pin(until_stopped(fut, deadline, caller, stats)).await?,
    };
    // A nested call given the remaining budget may time out a moment
    // before the deadline's timer fires: that handler also ended at the
    // deadline, for a caller that had given up, and counts the same.
    match outcome {
        Err(e) if deadline.is_some_and(|d| Instant::now() >= d) => {
            stats.cancelled();
            Err(e)
        }
        outcome => outcome,
    }
}

/// The rest of a handler that did not answer at once: until it ends, its
/// caller's cancel notice comes, or its deadline passes. `Err` when it
/// was stopped; `Ok` with its outcome when it ended.
async fn until_stopped(
    fut: impl std::future::Future<Output = Handled>,
    deadline: Option<Instant>,
    caller: Option<(String, Arc<super::in_flight::InFlight>)>,
    stats: &crate::stats::MethodStats,
) -> Result<Result<Box<RawValue>, RpcError>, RpcError> {
    // Its caller's cancel notice drops the handler as its deadline does.
    // (A notice whose sender went away, under a reused key, is none.)
    let tracked = caller.and_then(|(key, book)| book.track(&key));
    let cancelled = async move {
        if let Some(mut t) = tracked
            && (&mut t.cancelled).await.is_ok()
        {
            return;
        }
        std::future::pending().await
    };
    let at_deadline = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        outcome = fut => Ok(unpanicked(outcome)),
        () = cancelled => {
            stats.cancelled();
            tracing::debug!("handler cancelled by its caller");
            Err(RpcError::timeout("cancelled: the caller gave up"))
        }
        () = at_deadline => {
            stats.cancelled();
            tracing::debug!("handler cancelled at the caller's deadline");
            Err(RpcError::timeout("cancelled at the caller's deadline"))
        }
    }
}
