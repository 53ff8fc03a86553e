//! The Redis store: the snapshot in `muster:state:<service>:<name>:snap`,
//! the changes in the list `...:log`; a reset replaces both atomically.

use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;

use super::{Backend, Result, StoreError, Stored, head_text, line_text};

pub(super) struct RedisStore {
    conn: MultiplexedConnection,
    key: String,
}

fn failed(e: redis::RedisError) -> StoreError {
    StoreError::Backend {
        store: "Redis",
        source: Box::new(e),
    }
}

impl RedisStore {
    pub(super) async fn open(target: &str, service: &str, name: &str) -> Result<Self> {
        let unreachable = |e: redis::RedisError| StoreError::Unreachable {
            store: "Redis",
            target: target.to_owned(),
            source: Box::new(e),
        };
        let client = redis::Client::open(target).map_err(unreachable)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(unreachable)?;
        Ok(Self {
            conn,
            key: format!("muster:state:{service}:{name}"),
        })
    }
}

impl Backend for RedisStore {
    fn read(&mut self) -> BoxFuture<'_, Result<Stored>> {
        Box::pin(async move {
            let head: Option<String> = redis::cmd("GET")
                .arg(format!("{}:snap", self.key))
                .query_async(&mut self.conn)
                .await
                .map_err(failed)?;
            let lines: Vec<String> = redis::cmd("LRANGE")
                .arg(format!("{}:log", self.key))
                .arg(0)
                .arg(-1)
                .query_async(&mut self.conn)
                .await
                .map_err(failed)?;
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
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(format!("{}:snap", self.key))
                .arg(head_text(epoch, seq, &value))
                .cmd("DEL")
                .arg(format!("{}:log", self.key))
                .query_async::<()>(&mut self.conn)
                .await
                .map_err(failed)
        })
    }

    fn append(&mut self, seq: u64, change: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            redis::cmd("RPUSH")
                .arg(format!("{}:log", self.key))
                .arg(line_text(seq, &change))
                .query_async::<()>(&mut self.conn)
                .await
                .map_err(failed)
        })
    }
}
