//! Cancellation at the caller's deadline, and the sections it must not
//! cut (`docs/tracing.md`, "Cancellation at the deadline").
//!
//! A handler runs until its caller's deadline: past it the instance drops
//! the handler's future (and so every call it is awaiting), answers the
//! timeout error and counts the call as cancelled. Dropping a future stops
//! it at its current `.await`: code between two awaits always runs whole,
//! but a handler that writes a row and then publishes its event could stop
//! between the two. Such a section goes in [`uninterruptible`].

use std::future::Future;

/// Runs `work` to its end even when the handler awaiting it is dropped at
/// its caller's deadline: `work` runs as a task of its own, and the
/// handler waits for it. What it returns after the deadline nobody reads;
/// its effects happen whole. A panic in `work` is raised in the handler.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
///
/// let written = Arc::new(AtomicBool::new(false));
/// let w = written.clone();
/// // The handler is dropped 10 ms in (its caller's deadline); the
/// // section it started still finishes.
/// let handler = async move {
///     muster::uninterruptible(async move {
///         tokio::time::sleep(Duration::from_millis(50)).await;
///         w.store(true, Ordering::SeqCst);
///     })
///     .await
/// };
/// let _ = tokio::time::timeout(Duration::from_millis(10), handler).await;
/// tokio::time::sleep(Duration::from_millis(100)).await;
/// assert!(written.load(Ordering::SeqCst));
/// # }
/// ```
pub async fn uninterruptible<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled only when the runtime shuts down, which drops this
        // future too: nothing is waiting for an answer.
        Err(_) => std::future::pending().await,
    }
}
