//! The NATS store: a JetStream stream per state (`<P>_STATE_<service>_<name>`
//! on `<p>.state.<service>.<name>`, file storage) holding a snapshot
//! message and the change messages after it, in order. A reset publishes
//! the new snapshot first and then purges all but it, so a crash in
//! between leaves two snapshots, and reading starts from the last one.
//!
//! A stream rather than a key-value bucket: the changes are an append
//! log, which is what a stream is (a bucket keeps one value per key). A
//! snapshot must fit the server's largest message (`max_payload`, 1 MiB
//! unless the server says otherwise).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::future::BoxFuture;

use super::{Backend, Result, StoreError, Stored, head_text, line_text};

/// The header that marks a snapshot message.
const KIND: &str = "Muster-State";

pub(super) struct NatsStore {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    subject: String,
}

fn failed(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend {
        store: "NATS",
        source: Box::new(e),
    }
}

/// A stream-name token: letters, digits and `-` kept, anything else `_HH`.
fn token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

impl NatsStore {
    pub(super) async fn open(target: &str, service: &str, name: &str) -> Result<Self> {
        let (url, prefix, options) =
            muster_nats::client_options(target).map_err(|e| StoreError::Unreachable {
                store: "NATS",
                target: target.to_owned(),
                source: Box::new(e),
            })?;
        let prefix = prefix.as_deref().unwrap_or("muster");
        let client = options
            .connect(url)
            .await
            .map_err(|e| StoreError::Unreachable {
                store: "NATS",
                target: target.to_owned(),
                source: Box::new(e),
            })?;
        let jetstream = jetstream::new(client);
        let stream_name = format!("{}_STATE_{}_{}", token(prefix), token(service), token(name));
        let subject = format!("{prefix}.state.{}.{}", token(service), token(name));
        let stream = match jetstream.get_stream(&stream_name).await {
            Ok(s) => s,
            Err(_) => {
                let made = jetstream
                    .create_stream(stream::Config {
                        name: stream_name.clone(),
                        subjects: vec![subject.clone()],
                        storage: stream::StorageType::File,
                        ..stream::Config::default()
                    })
                    .await;
                // Made here, or by a second owner at the same moment.
                match jetstream.get_stream(&stream_name).await {
                    Ok(s) => s,
                    Err(e) => return Err(made.err().map_or_else(|| failed(e), failed)),
                }
            }
        };
        Ok(Self {
            jetstream,
            stream,
            subject,
        })
    }

    async fn publish(&self, headers: HeaderMap, text: String) -> Result<u64> {
        let ack = self
            .jetstream
            .publish_with_headers(self.subject.clone(), headers, text.into())
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        Ok(ack.sequence)
    }
}

impl Backend for NatsStore {
    fn read(&mut self) -> BoxFuture<'_, Result<Stored>> {
        Box::pin(async move {
            let state = self.stream.info().await.map_err(failed)?.state.clone();
            let (mut head, mut lines) = (None, Vec::new());
            if state.messages == 0 {
                return Ok((head, lines));
            }
            // One direct read per message: the log holds at most the
            // compaction interval (10,000 changes), read once at start-up.
            for seq in state.first_sequence..=state.last_sequence {
                let Ok(m) = self.stream.get_raw_message(seq).await else {
                    continue; // purged or deleted
                };
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                let is_snapshot = m
                    .headers
                    .get(KIND)
                    .is_some_and(|v| v.as_str() == "snapshot");
                if is_snapshot {
                    head = Some(text);
                    lines.clear();
                } else if head.is_some() {
                    lines.push(text);
                }
            }
            Ok((head, lines))
        })
    }

    fn reset<'a>(
        &'a mut self,
        epoch: &'a str,
        seq: u64,
        value: String,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            headers.insert(KIND, "snapshot");
            self.publish(headers, head_text(epoch, seq, &value)).await?;
            // Everything but the snapshot just written (the owner appends
            // from this same task, so nothing came after it).
            self.stream.purge().keep(1).await.map_err(failed)?;
            Ok(())
        })
    }

    fn append(&mut self, seq: u64, change: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.publish(HeaderMap::new(), line_text(seq, &change))
                .await
                .map(|_| ())
        })
    }
}
