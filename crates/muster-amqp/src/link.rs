//! The connection to the broker, replaced when it breaks, and the shared
//! publishing channels. Everything that uses the broker asks the link for a
//! channel each time it (re)starts, and so re-declares its topology and
//! QoS on the new connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use muster_core::retry::Backoff;
use muster_core::{Error, ErrorKind};
use tokio_util::sync::CancellationToken;

pub(crate) fn amqp_error(what: &str, e: &lapin::Error) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}

/// One connection at a time; a broken one is replaced on the next use.
pub(crate) struct Link {
    url: String,
    /// The CA of an `amqps://` URL's `tls_ca`, when given.
    tls: lapin::tcp::OwnedTLSConfig,
    current: tokio::sync::Mutex<Option<(u64, Arc<Connection>)>>,
    generation: AtomicU64,
    pub(crate) shutdown: CancellationToken,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) async fn open(
        url: &str,
        tls: lapin::tcp::OwnedTLSConfig,
    ) -> Result<Arc<Self>, Error> {
        let link = Arc::new(Self {
            url: url.to_owned(),
            tls,
            current: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
        });
        link.connection().await?;
        Ok(link)
    }

    /// The live connection, connecting once if there is none.
    pub(crate) async fn connection(&self) -> Result<(u64, Arc<Connection>), Error> {
        let mut current = self.current.lock().await;
        if let Some((g, c)) = current.as_ref()
            && c.status().connected()
        {
            return Ok((*g, c.clone()));
        }
        let props = ConnectionProperties::default().with_connection_name("muster".into());
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            Connection::connect_with_config(
                &self.url,
                props,
                self.tls.clone(),
                lapin::runtime::default_runtime()
                    .map_err(|e| amqp_error("the AMQP client's runtime", &e))?,
            ),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Unavailable,
                format!("connect to RabbitMQ at {}: timed out", redact(&self.url)),
            )
        })?
        .map_err(|e| amqp_error(&format!("connect to RabbitMQ at {}", redact(&self.url)), &e))?;
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if g > 1 {
            tracing::info!(generation = g, "reconnected to RabbitMQ");
        }
        let conn = Arc::new(conn);
        *current = Some((g, conn.clone()));
        Ok((g, conn))
    }

    /// A new channel on the live connection.
    pub(crate) async fn channel(&self) -> Result<(u64, Channel), Error> {
        let (g, conn) = self.connection().await?;
        match conn.create_channel().await {
            Ok(ch) => Ok((g, ch)),
            Err(e) => {
                self.broken(g).await;
                Err(amqp_error("open a channel", &e))
            }
        }
    }

    /// Forgets the connection of generation `g` (if still current) so the
    /// next use reconnects.
    pub(crate) async fn broken(&self, g: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(cg, _)| *cg == g)
            && let Some((_, c)) = current.take()
        {
            let _ = c.close(0, "muster: connection replaced".into()).await;
        }
    }

    /// Stops every loop of this transport and closes the connection.
    pub(crate) async fn close(&self) {
        self.shutdown.cancel();
        if let Some((_, c)) = self.current.lock().await.take() {
            let closing = c.close(200, "muster: transport closed".into());
            let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        }
    }

    /// Runs `setup` on a fresh channel until it works, with backoff; `None`
    /// when `stop` or the transport's shutdown comes first.
    pub(crate) async fn with_retry<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        what: &str,
        mut setup: F,
    ) -> Option<T>
    where
        F: FnMut(u64, Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut backoff = Backoff::new();
        loop {
            if stop.is_cancelled() || self.shutdown.is_cancelled() {
                return None;
            }
            let attempt = match self.channel().await {
                Ok((g, ch)) => setup(g, ch).await.map_err(|e| (Some(g), e)),
                Err(e) => Err((None, e)),
            };
            match attempt {
                Ok(v) => return Some(v),
                Err((g, e)) => {
                    let wait = backoff.failed();
                    if backoff.worth_logging() {
                        tracing::warn!(error = %e, failures = backoff.failures(), "{what} failed; retrying");
                    }
                    if let Some(g) = g
                        && !self.connection_alive(g).await
                    {
                        self.broken(g).await;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = self.shutdown.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn connection_alive(&self, g: u64) -> bool {
        let current = self.current.lock().await;
        current
            .as_ref()
            .is_some_and(|(cg, c)| *cg == g && c.status().connected())
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A channel kept for publishing, replaced when it breaks; in confirm mode
/// when `confirms` (work queues), without for events and replies.
pub(crate) struct Publisher {
    link: Arc<Link>,
    confirms: bool,
    channel: tokio::sync::Mutex<Option<(u64, Channel)>>,
}

/// A message to publish.
pub(crate) struct Outgoing<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) properties: BasicProperties,
    pub(crate) mandatory: bool,
}

/// What became of a publish.
pub(crate) enum Published {
    /// Taken by the broker (confirmed, with confirms on).
    Taken,
    /// Unroutable: no queue is bound for the routing key (mandatory only).
    Returned,
}

impl Publisher {
    pub(crate) fn new(link: Arc<Link>, confirms: bool) -> Self {
        Self {
            link,
            confirms,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<(u64, Channel), Error> {
        let mut slot = self.channel.lock().await;
        if let Some((g, ch)) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok((*g, ch.clone()));
        }
        let (g, ch) = self.link.channel().await?;
        if self.confirms {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| amqp_error("enable publisher confirms", &e))?;
        }
        *slot = Some((g, ch.clone()));
        Ok((g, ch))
    }

    /// Publishes, waiting up to `wait` for the broker while it is away.
    /// With confirms, returns once the broker has the message.
    pub(crate) async fn publish(
        &self,
        msg: Outgoing<'_>,
        wait: Duration,
    ) -> Result<Published, Error> {
        let deadline = Instant::now() + wait;
        let mut backoff = Backoff::between(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let attempt = self.try_publish(&msg).await;
            match attempt {
                Ok(p) => return Ok(p),
                Err((g, e)) => {
                    *self.channel.lock().await = None;
                    if let Some(g) = g
                        && !self.link.connection_alive(g).await
                    {
                        self.link.broken(g).await;
                    }
                    let pause = backoff.failed();
                    if Instant::now() + pause > deadline {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "{e} (RabbitMQ unreachable for {wait:?}; nothing was published)"
                            ),
                        ));
                    }
                    tracing::warn!(error = %e, "publish to RabbitMQ failed; waiting for it");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn try_publish(&self, msg: &Outgoing<'_>) -> Result<Published, (Option<u64>, Error)> {
        let (g, ch) = self.channel().await.map_err(|e| (None, e))?;
        let confirm = ch
            .basic_publish(
                msg.exchange.into(),
                msg.routing_key.into(),
                BasicPublishOptions {
                    mandatory: msg.mandatory,
                    ..BasicPublishOptions::default()
                },
                msg.body,
                msg.properties.clone(),
            )
            .await
            .map_err(|e| (Some(g), amqp_error("publish", &e)))?;
        if !self.confirms {
            return Ok(Published::Taken);
        }
        let confirmation = confirm
            .await
            .map_err(|e| (Some(g), amqp_error("publisher confirm", &e)))?;
        if confirmation.is_nack() {
            return Err((
                Some(g),
                Error::new(
                    ErrorKind::Unavailable,
                    "RabbitMQ refused the message (nack)",
                ),
            ));
        }
        Ok(match confirmation.take_message() {
            Some(_) => Published::Returned,
            None => Published::Taken,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(super::redact("amqp://h"), "amqp://h");
    }
}
