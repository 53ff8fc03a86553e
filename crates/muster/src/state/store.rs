//! Where an owner keeps its state across restarts: a snapshot plus the
//! changes after it, appended as changes happen (so a `kill -9` loses
//! nothing already acknowledged) and folded into a new snapshot every
//! 10,000 changes.
//!
//! - a file path: the first line is the snapshot, each further line a change;
//! - `redis://...`: the snapshot in `muster:state:<service>:<name>:snap`,
//!   the changes in the list `...:log`;
//! - `postgres://...`: the tables `muster_state` and `muster_state_log`
//!   (created if missing).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StateKind;

/// Changes appended before the store folds them into one snapshot.
const COMPACT_EVERY: usize = 10_000;

type Result<T> = std::result::Result<T, String>;

#[derive(Serialize, Deserialize)]
struct Head<E, S> {
    epoch: E,
    seq: u64,
    value: S,
}

#[derive(Serialize, Deserialize)]
struct Line<C> {
    seq: u64,
    change: C,
}

/// What a store held.
pub(crate) struct Loaded<S> {
    pub(crate) epoch: String,
    pub(crate) seq: u64,
    pub(crate) value: S,
}

/// The error for a store whose backend this build leaves out.
#[cfg(not(all(feature = "redis", feature = "postgres")))]
fn missing_feature(target: &str, feature: &str) -> String {
    format!(
        "{target}: this build of muster has no {feature} store (the muster crate's cargo feature `{feature}`, on by default, is off)"
    )
}

/// An open store.
pub(crate) struct Store {
    backend: Backend,
    appended: usize,
}

enum Backend {
    File {
        path: PathBuf,
        file: Option<File>,
    },
    #[cfg(feature = "redis")]
    Redis {
        conn: redis::aio::MultiplexedConnection,
        key: String,
    },
    #[cfg(feature = "postgres")]
    Postgres {
        client: tokio_postgres::Client,
        service: String,
        name: String,
    },
}

impl Store {
    /// Opens `target` (a path, `redis://...` or `postgres://...`) for the
    /// state `service/name` and reads what it holds.
    pub(crate) async fn open<S: StateKind>(
        target: &str,
        service: &str,
        name: &str,
    ) -> Result<(Self, Option<Loaded<S>>)> {
        #[cfg(not(all(feature = "redis", feature = "postgres")))]
        let _ = (service, name);
        let backend = if target.starts_with("redis://") || target.starts_with("rediss://") {
            #[cfg(feature = "redis")]
            {
                let client = redis::Client::open(target).map_err(|e| format!("{target}: {e}"))?;
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("cannot reach Redis at {target}: {e}"))?;
                Backend::Redis {
                    conn,
                    key: format!("muster:state:{service}:{name}"),
                }
            }
            #[cfg(not(feature = "redis"))]
            return Err(missing_feature(target, "redis"));
        } else if target.starts_with("postgres://") || target.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            {
                let (client, connection) = tokio_postgres::connect(target, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| format!("cannot reach PostgreSQL at {target}: {e}"))?;
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
                    .map_err(|e| format!("PostgreSQL: cannot create the state tables: {e}"))?;
                Backend::Postgres {
                    client,
                    service: service.to_owned(),
                    name: name.to_owned(),
                }
            }
            #[cfg(not(feature = "postgres"))]
            return Err(missing_feature(target, "postgres"));
        } else {
            Backend::File {
                path: PathBuf::from(target),
                file: None,
            }
        };
        let mut store = Self {
            backend,
            appended: 0,
        };
        let loaded = store.load::<S>().await?;
        Ok((store, loaded))
    }

    async fn load<S: StateKind>(&mut self) -> Result<Option<Loaded<S>>> {
        let (head, lines): (Option<String>, Vec<String>) = match &mut self.backend {
            Backend::File { path, .. } => read_file(path)?,
            #[cfg(feature = "redis")]
            Backend::Redis { conn, key } => {
                let head: Option<String> = redis::cmd("GET")
                    .arg(format!("{key}:snap"))
                    .query_async(conn)
                    .await
                    .map_err(|e| format!("Redis: {e}"))?;
                let lines: Vec<String> = redis::cmd("LRANGE")
                    .arg(format!("{key}:log"))
                    .arg(0)
                    .arg(-1)
                    .query_async(conn)
                    .await
                    .map_err(|e| format!("Redis: {e}"))?;
                (head, lines)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres {
                client,
                service,
                name,
            } => {
                let pg = |e: tokio_postgres::Error| format!("PostgreSQL: {e}");
                let head = client
                    .query_opt(
                        "SELECT epoch, seq, value FROM muster_state WHERE service = $1 AND name = $2",
                        &[service, name],
                    )
                    .await
                    .map_err(pg)?
                    .map(|row| {
                        let epoch: String = row.get(0);
                        let seq: i64 = row.get(1);
                        let value: String = row.get(2);
                        format!(r#"{{"epoch":{},"seq":{seq},"value":{value}}}"#, serde_json::Value::from(epoch))
                    });
                let lines = client
                    .query(
                        "SELECT seq, change FROM muster_state_log WHERE service = $1 AND name = $2 ORDER BY seq",
                        &[service, name],
                    )
                    .await
                    .map_err(pg)?
                    .into_iter()
                    .map(|row| {
                        let seq: i64 = row.get(0);
                        let change: String = row.get(1);
                        format!(r#"{{"seq":{seq},"change":{change}}}"#)
                    })
                    .collect();
                (head, lines)
            }
        };
        let Some(head) = head else { return Ok(None) };
        let head: Head<String, S> =
            serde_json::from_str(&head).map_err(|e| format!("not a saved state: {e}"))?;
        let mut loaded = Loaded {
            epoch: head.epoch,
            seq: head.seq,
            value: head.value,
        };
        for line in lines {
            // A torn last line (a crash mid-write) ends the replay.
            let Ok(l) = serde_json::from_str::<Line<S::Change>>(&line) else {
                break;
            };
            if l.seq == loaded.seq + 1 {
                loaded.value.apply(l.change);
                loaded.seq = l.seq;
            }
        }
        Ok(Some(loaded))
    }

    /// Replaces what the store holds with `value` as of `seq`.
    pub(crate) async fn reset<S: Serialize>(
        &mut self,
        epoch: &str,
        seq: u64,
        value: &S,
    ) -> Result<()> {
        self.appended = 0;
        match &mut self.backend {
            Backend::File { path, file } => {
                *file = None;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                let tmp = path.with_extension("tmp");
                let io = |e: std::io::Error| format!("{}: {e}", path.display());
                {
                    let mut f = File::create(&tmp).map_err(io)?;
                    serde_json::to_writer(&mut f, &Head { epoch, seq, value })
                        .map_err(|e| e.to_string())?;
                    f.write_all(b"\n").map_err(io)?;
                }
                std::fs::rename(&tmp, &*path).map_err(io)?;
                *file = Some(OpenOptions::new().append(true).open(&*path).map_err(io)?);
            }
            #[cfg(feature = "redis")]
            Backend::Redis { conn, key } => {
                let head = serde_json::to_string(&Head { epoch, seq, value })
                    .map_err(|e| e.to_string())?;
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(format!("{key}:snap"))
                    .arg(head)
                    .cmd("DEL")
                    .arg(format!("{key}:log"))
                    .query_async::<()>(conn)
                    .await
                    .map_err(|e| format!("Redis: {e}"))?;
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres {
                client,
                service,
                name,
            } => {
                let value = serde_json::to_string(value).map_err(|e| e.to_string())?;
                let seq = i64::try_from(seq).map_err(|e| e.to_string())?;
                let pg = |e: tokio_postgres::Error| format!("PostgreSQL: {e}");
                let tx = client.transaction().await.map_err(pg)?;
                tx.execute(
                    "INSERT INTO muster_state (service, name, epoch, seq, value) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (service, name) DO UPDATE SET epoch = $3, seq = $4, value = $5",
                    &[service, name, &epoch, &seq, &value],
                )
                .await
                .map_err(pg)?;
                tx.execute(
                    "DELETE FROM muster_state_log WHERE service = $1 AND name = $2",
                    &[service, name],
                )
                .await
                .map_err(pg)?;
                tx.commit().await.map_err(pg)?;
            }
        }
        Ok(())
    }

    /// Appends a change; now and then folds everything into one snapshot
    /// (`current` gives the value then).
    pub(crate) async fn append<S: Serialize, C: Serialize>(
        &mut self,
        epoch: &str,
        seq: u64,
        change: &C,
        current: impl FnOnce() -> S,
    ) -> Result<()> {
        if self.appended >= COMPACT_EVERY {
            return self.reset(epoch, seq, &current()).await;
        }
        self.appended += 1;
        match &mut self.backend {
            Backend::File { path, file } => {
                let Some(file) = file else {
                    return Err(format!("{}: not open", path.display()));
                };
                let mut line =
                    serde_json::to_vec(&Line { seq, change }).map_err(|e| e.to_string())?;
                line.push(b'\n');
                file.write_all(&line)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            #[cfg(feature = "redis")]
            Backend::Redis { conn, key } => {
                let line =
                    serde_json::to_string(&Line { seq, change }).map_err(|e| e.to_string())?;
                redis::cmd("RPUSH")
                    .arg(format!("{key}:log"))
                    .arg(line)
                    .query_async::<()>(conn)
                    .await
                    .map_err(|e| format!("Redis: {e}"))
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres {
                client,
                service,
                name,
            } => {
                let change = serde_json::to_string(change).map_err(|e| e.to_string())?;
                let seq = i64::try_from(seq).map_err(|e| e.to_string())?;
                client
                    .execute(
                        "INSERT INTO muster_state_log (service, name, seq, change) VALUES ($1, $2, $3, $4)",
                        &[service, name, &seq, &change],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("PostgreSQL: {e}"))
            }
        }
    }
}

fn read_file(path: &Path) -> Result<(Option<String>, Vec<String>)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Vec::new())),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut lines = BufReader::new(file).lines();
    let head = lines
        .next()
        .transpose()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((head, lines.map_while(std::result::Result::ok).collect()))
}
