//! Replicated state for muster's tests. `--role owner` owns the delta
//! state `stateowner/items` (keys `k0`..`k{keys}`, u64 values) and, in
//! main mode, applies `--changes N` random changes; `--role reader`
//! replicates it. Both answer `hash` with the value's hash, its length,
//! its sequence number and whether it is stale.

use std::hash::{DefaultHasher, Hash, Hasher};

use muster::prelude::*;
use muster::state::{Delta, State};

#[derive(Debug, Deserialize, Serialize)]
struct Conf {
    role: String,
    #[serde(default = "default_changes")]
    changes: u64,
    #[serde(default = "default_keys")]
    keys: u64,
    #[serde(default = "default_seed")]
    seed: u64,
    /// Microseconds to pause every 100 changes (0: full speed).
    #[serde(default)]
    pause_us: u64,
    #[serde(default)]
    persist: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

fn default_changes() -> u64 {
    100_000
}
fn default_keys() -> u64 {
    1_000
}
fn default_seed() -> u64 {
    7
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Digest {
    hash: u64,
    len: usize,
    seq: u64,
    stale: bool,
}

fn digest(s: &State<Delta<u64>>) -> Digest {
    let mut h = DefaultHasher::new();
    for (k, v) in s.iter() {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    Digest {
        hash: h.finish(),
        len: s.len(),
        seq: s.seq(),
        stale: s.is_stale(),
    }
}

async fn hash(s: State<Delta<u64>>) -> Result<Digest, RpcError> {
    Ok(digest(&s))
}

async fn churn(ctx: Ctx) -> Result<(), muster::Error> {
    let c = ctx.config::<Conf>().expect("config");
    let mut x = c.seed.max(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..c.changes {
        let (a, b, v, del) = (next() % c.keys, next() % c.keys, next(), next() % 4 == 0);
        ctx.update_state::<Delta<u64>, _>(|s| {
            s.insert(format!("k{a}"), v);
            if del {
                s.remove(&format!("k{b}"));
            } else {
                s.insert(format!("k{b}"), v / 2);
            }
        })
        .await?;
        if c.pause_us > 0 && i % 100 == 99 {
            tokio::time::sleep(std::time::Duration::from_micros(c.pause_us)).await;
        }
        if ctx.is_shutting_down() {
            break;
        }
    }
    tracing::info!(changes = c.changes, "done");
    ctx.shutdown().await;
    Ok(())
}

fn main() -> muster::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let role = args
        .windows(2)
        .find(|w| w[0] == "--role")
        .map_or("reader", |w| w[1].as_str());
    let persist = args
        .windows(2)
        .find(|w| w[0] == "--persist")
        .map(|w| w[1].clone());
    let state = args
        .windows(2)
        .find(|w| w[0] == "--state")
        .map_or("items", |w| w[1].as_str());
    let service = if role == "owner" {
        let mut s = Service::new("stateowner").state_out::<Delta<u64>>(state);
        if let Some(p) = persist {
            s = s.persist(p);
        }
        s.main(churn)
    } else {
        Service::new("statereader").state_in::<Delta<u64>>(&format!("stateowner/{state}"))
    };
    service.config::<Conf>().rpc("hash", hash).run()
}
