//! What credentials cost (`docs/security.md`): the same work on an open
//! bus (the baseline) and on a bus with a secret, measured in one run and
//! interleaved round by round, because this machine is noisy.

use std::time::{Duration, Instant};

use muster::prelude::*;
use muster::transport::SharedTransport;
use muster_core::auth::{Credential, KeyId, MasterSecret};
use muster_zmq::{Bus, BusAddr, BusOptions};
use tokio::process::Child;

use super::{BenchCmd, exe, free_ports, report};

/// Rounds per measurement; the median is reported.
const ROUNDS: usize = 3;

/// One bus, open or with a secret, and a credential valid on it.
struct Side {
    bus: Bus,
    url: String,
    credential: Credential,
}

impl Side {
    async fn start(secret: Option<MasterSecret>) -> anyhow::Result<Self> {
        // On an open bus a credential is carried and not checked.
        let master = match &secret {
            Some(m) => m.clone(),
            None => MasterSecret::generate()?,
        };
        let credential = master.credential(KeyId::User("bench".into()));
        let url = format!("zmq://127.0.0.1:{}", free_ports()?);
        let addr: BusAddr = url.parse()?;
        let mut options = BusOptions::default();
        options.secret = secret;
        let bus = Bus::start(addr, options).await?;
        Ok(Self {
            bus,
            url,
            credential,
        })
    }

    async fn transport(&self) -> anyhow::Result<SharedTransport> {
        let mut options = muster::bus::BusOptions::default();
        options.credential = Some(self.credential.clone());
        Ok(muster::bus::connect_with(&self.url, None, &options).await?)
    }

    /// `muster __bench-peer KIND` with this side's credential.
    fn peer(&self, kind: &str) -> anyhow::Result<Child> {
        Ok(tokio::process::Command::new(exe()?)
            .args(["__bench-peer", kind, "--at", &self.url])
            .env("MUSTER_CREDENTIAL", self.credential.to_env_value())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?)
    }
}

/// Registry verbs, calls and first calls, open bus against secret bus.
pub(super) async fn run(cmd: &BenchCmd) -> anyhow::Result<()> {
    let open = Side::start(None).await?;
    let signed = Side::start(Some(MasterSecret::generate()?)).await?;
    let d = cmd.duration;

    let (o, s) = interleaved(|baseline| updates(if baseline { &open } else { &signed }, d)).await?;
    report("registry verb", "updates", s, "open bus", o);

    let peers = [
        open.peer("muster-echo")?,
        signed.peer("muster-echo")?,
        signed.peer("muster-echo-auth")?,
    ];
    let open_transport = open.transport().await?;
    let signed_transport = signed.transport().await?;
    let open_client = Client::new(open_transport.clone());
    let signed_client = Client::new(signed_transport.clone());
    crate::demo::wait_for(&open_client, &[("bench", 1)]).await?;
    crate::demo::wait_for(&signed_client, &[("bench", 1), ("bench-auth", 1)]).await?;

    let (o, s) = interleaved(|baseline| {
        calls(
            if baseline {
                &open_client
            } else {
                &signed_client
            },
            "bench.echo",
            d,
        )
    })
    .await?;
    report("rpc, secret", "calls", s, "open bus", o);

    let method = |baseline| {
        if baseline {
            "bench.echo"
        } else {
            "bench-auth.echo"
        }
    };
    let (o, s) = interleaved(|baseline| calls(&signed_client, method(baseline), d)).await?;
    report("rpc, auth", "calls", s, "no require_auth", o);

    let (o, s) = interleaved(|baseline| first_calls(&signed, method(baseline), d)).await?;
    report("first call", "callers", s, "no require_auth", o);

    for mut p in peers {
        p.kill().await.ok();
    }
    open_transport.close().await;
    signed_transport.close().await;
    open.bus.stop().await;
    signed.bus.stop().await;
    Ok(())
}

/// Runs `measure(true)` (the baseline) and `measure(false)` in turn,
/// `ROUNDS` times; the median of each.
async fn interleaved<F, Fut>(mut measure: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut b = Vec::with_capacity(ROUNDS);
    let mut o = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        b.push(measure(true).await?);
        o.push(measure(false).await?);
    }
    Ok((median(b), median(o)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Acknowledged `ctx.update`s per second from an instance in this process:
/// each is one signed registry verb on a bus with a secret.
async fn updates(side: &Side, duration: Duration) -> anyhow::Result<f64> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let service = Service::new("bench-updates").main(move |ctx: Ctx| {
        let tx = tx.lock().ok().and_then(|mut t| t.take());
        async move {
            let warm = Instant::now() + Duration::from_millis(200);
            while Instant::now() < warm {
                ctx.update(&"warm").await?;
            }
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < duration {
                ctx.update(&n).await?;
                n += 1;
            }
            if let Some(tx) = tx {
                let _ = tx.send(n as f64 / start.elapsed().as_secs_f64());
            }
            Ok::<(), muster::Error>(())
        }
    });
    let transport = side.transport().await?;
    let mut handle = service
        .start_with(
            transport.clone(),
            muster::StartOptions::default().main_mode(true),
        )
        .await?;
    let finished = handle.main_finished().await;
    let rate = rx.await;
    handle.stop().await;
    transport.close().await;
    finished.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(rate?)
}

/// Synchronous calls per second.
async fn calls(client: &Client, method: &str, duration: Duration) -> anyhow::Result<f64> {
    let warm = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm {
        let _: String = client.call(method, &"x").await?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        let _: String = client.call(method, &"x").await?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// New callers per second: connect, one call, close. With `require_auth`
/// the instance asks the bus to verify each new connection's credential.
async fn first_calls(side: &Side, method: &str, duration: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        let transport = side.transport().await?;
        let _: String = Client::new(transport.clone()).call(method, &"x").await?;
        transport.close().await;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
