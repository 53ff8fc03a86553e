//! The PostgreSQL store: the tables `muster_state` (one row per state:
//! epoch, seq, value) and `muster_state_log` (one row per change), created
//! if missing; a reset replaces both in one transaction.

use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use super::{Backend, Result, StoreError, Stored, head_text, line_text};

pub(super) struct PostgresStore {
    client: Client,
    service: String,
    name: String,
}

fn failed(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend {
        store: "PostgreSQL",
        source: Box::new(e),
    }
}

/// Sequence numbers are `bigint`: numbers past `i64::MAX` cannot be kept.
fn seq_of(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|e| StoreError::Backend {
        store: "PostgreSQL",
        source: Box::new(e),
    })
}

impl PostgresStore {
    pub(super) async fn open(target: &str, service: &str, name: &str) -> Result<Self> {
        let (client, connection) = tokio_postgres::connect(target, tokio_postgres::NoTls)
            .await
            .map_err(|e| StoreError::Unreachable {
                store: "PostgreSQL",
                target: target.to_owned(),
                source: Box::new(e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "state store: PostgreSQL connection ended");
            }
        });
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS muster_state (
                    service text NOT NULL, name text NOT NULL, epoch text NOT NULL,
                    seq bigint NOT NULL, value text NOT NULL, PRIMARY KEY (service, name));
                 CREATE TABLE IF NOT EXISTS muster_state_log (
                    service text NOT NULL, name text NOT NULL, seq bigint NOT NULL,
                    change text NOT NULL, PRIMARY KEY (service, name, seq));",
            )
            .await
            .map_err(failed)?;
        Ok(Self {
            client,
            service: service.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl Backend for PostgresStore {
    fn read(&mut self) -> BoxFuture<'_, Result<Stored>> {
        Box::pin(async move {
            let head = self
                .client
                .query_opt(
                    "SELECT epoch, seq, value FROM muster_state WHERE service = $1 AND name = $2",
                    &[&self.service, &self.name],
                )
                .await
                .map_err(failed)?
                .map(|row| {
                    let epoch: String = row.get(0);
                    let seq: i64 = row.get(1);
                    let value: String = row.get(2);
                    head_text(&epoch, seq.unsigned_abs(), &value)
                });
            let lines = self
                .client
                .query(
                    "SELECT seq, change FROM muster_state_log WHERE service = $1 AND name = $2 ORDER BY seq",
                    &[&self.service, &self.name],
                )
                .await
                .map_err(failed)?
                .into_iter()
                .map(|row| {
                    let seq: i64 = row.get(0);
                    let change: String = row.get(1);
                    line_text(seq.unsigned_abs(), &change)
                })
                .collect();
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
            let seq = seq_of(seq)?;
            let tx = self.client.transaction().await.map_err(failed)?;
            tx.execute(
                "INSERT INTO muster_state (service, name, epoch, seq, value) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (service, name) DO UPDATE SET epoch = $3, seq = $4, value = $5",
                &[&self.service, &self.name, &epoch, &seq, &value],
            )
            .await
            .map_err(failed)?;
            tx.execute(
                "DELETE FROM muster_state_log WHERE service = $1 AND name = $2",
                &[&self.service, &self.name],
            )
            .await
            .map_err(failed)?;
            tx.commit().await.map_err(failed)
        })
    }

    fn append(&mut self, seq: u64, change: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let seq = seq_of(seq)?;
            self.client
                .execute(
                    "INSERT INTO muster_state_log (service, name, seq, change) VALUES ($1, $2, $3, $4)",
                    &[&self.service, &self.name, &seq, &change],
                )
                .await
                .map(|_| ())
                .map_err(failed)
        })
    }
}
