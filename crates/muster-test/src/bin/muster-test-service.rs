//! A service for muster's tests: required, typed and secret config keys,
//! a slow method, a panicking method, a method that logs, and methods
//! and handlers that call, publish and enqueue for the trace tests.

use muster::prelude::*;

#[derive(Debug, Deserialize, Serialize)]
struct TestConfig {
    greeting: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default)]
    token: Option<Secret<String>>,
    #[serde(default)]
    flag: bool,
}

fn default_port() -> u16 {
    8080
}

#[derive(Deserialize, JsonSchema)]
struct SleepArgs {
    ms: u64,
}

async fn hello(Config(c): Config<TestConfig>, Args(name): Args<String>) -> String {
    tracing::info!(%name, "saying hello");
    format!("{}, {name}", c.greeting)
}

async fn config(Config(c): Config<TestConfig>) -> serde_json::Value {
    serde_json::json!({
        "greeting": c.greeting,
        "port": c.port,
        "flag": c.flag,
        "token_set": c.token.is_some(),
        "token_debug": format!("{:?}", c.token),
    })
}

async fn sleep(Args(a): Args<SleepArgs>) -> Result<u64, RpcError> {
    tokio::time::sleep(Duration::from_millis(a.ms)).await;
    Ok(a.ms)
}

/// Memory held on purpose, for the monitor's tests.
static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

#[derive(Deserialize, JsonSchema)]
struct AllocArgs {
    mb: usize,
}

/// Allocates and touches `mb` megabytes, and keeps them.
async fn alloc(Args(a): Args<AllocArgs>) -> Result<usize, RpcError> {
    let mut block = vec![0u8; a.mb.min(4096) << 20];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    held.push(block);
    Ok(held.iter().map(Vec::len).sum::<usize>() >> 20)
}

#[derive(Deserialize, JsonSchema)]
struct BlobArgs {
    /// Length of the answer, in bytes.
    bytes: usize,
    /// Wait this long first.
    #[serde(default)]
    ms: u64,
}

/// A string of `bytes` bytes, after `ms` milliseconds: large replies and
/// slow ones, for the size-limit and graceful-stop tests.
async fn blob(Args(a): Args<BlobArgs>) -> String {
    tokio::time::sleep(Duration::from_millis(a.ms)).await;
    "x".repeat(a.bytes.min(64 << 20))
}

#[derive(Deserialize, JsonSchema)]
struct RelayArgs {
    /// `SERVICE.METHOD` to call.
    target: String,
    #[serde(default)]
    params: serde_json::Value,
    /// The nested call's timeout (the client's default when absent).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Calls `target` from inside the handler and answers what it answered:
/// a nested call, for the deadline, cancellation and trace tests.
async fn relay(ctx: Ctx, Args(a): Args<RelayArgs>) -> Result<serde_json::Value, RpcError> {
    let mut options = CallOptions::default();
    if let Some(ms) = a.timeout_ms {
        options = options.timeout(Duration::from_millis(ms));
    }
    ctx.request_with(&a.target, &a.params, options).await
}

#[derive(Deserialize, JsonSchema)]
struct AnnounceArgs {
    topic: String,
}

/// Publishes one event from inside the handler.
async fn announce(ctx: Ctx, Args(a): Args<AnnounceArgs>) -> Result<(), RpcError> {
    ctx.publish(&a.topic, &serde_json::json!({"announced": true}))
        .await
        .map_err(RpcError::internal)
}

#[derive(Deserialize, JsonSchema)]
struct EnqueueArgs {
    queue: String,
    #[serde(default)]
    job: serde_json::Value,
}

/// Enqueues one job from inside the handler; answers its id.
async fn enqueue(ctx: Ctx, Args(a): Args<EnqueueArgs>) -> Result<String, RpcError> {
    ctx.enqueue(&a.queue, &a.job)
        .await
        .map_err(RpcError::internal)
}

async fn crash() -> Result<(), RpcError> {
    panic!("asked to crash")
}

fn main() -> muster::Result<()> {
    // `TESTSVC_NAME`: run under another name (two of them in one test).
    let name = std::env::var("TESTSVC_NAME").unwrap_or_else(|_| "testsvc".to_owned());
    let service = Service::new(name);
    // `TESTSVC_REQUIRE_AUTH=1`: only callers with a bus credential.
    let service = if std::env::var_os("TESTSVC_REQUIRE_AUTH").is_some() {
        service.require_auth()
    } else {
        service
    };
    // `TESTSVC_LISTEN=PATTERN`: also subscribe to events (and do nothing
    // with them), for the trace tests.
    let service = match std::env::var("TESTSVC_LISTEN") {
        Ok(pattern) => service.subscribe(&pattern, || async { Ok::<_, RpcError>(()) }),
        Err(_) => service,
    };
    // `TESTSVC_CONSUME=QUEUE` (and `TESTSVC_CONSUME_PUBLISH=TOPIC`):
    // consume a work queue, publishing one event per job done.
    let service = match std::env::var("TESTSVC_CONSUME") {
        Ok(queue) => {
            let topic = std::env::var("TESTSVC_CONSUME_PUBLISH").ok();
            service.consume(
                &queue,
                move |ctx: Ctx, Args(job): Args<serde_json::Value>| {
                    let topic = topic.clone();
                    async move {
                        if let Some(topic) = topic {
                            ctx.publish(&topic, &job)
                                .await
                                .map_err(RpcError::internal)?;
                        }
                        Ok::<_, RpcError>(())
                    }
                },
            )
        }
        Err(_) => service,
    };
    // `TESTSVC_INIT_GATE=PATH`: the start waits in `init` until PATH
    // exists, after creating `PATH.waiting` (a signal during start).
    let service = match std::env::var("TESTSVC_INIT_GATE") {
        Ok(gate) => service.init(move |_ctx| {
            let gate = std::path::PathBuf::from(&gate);
            async move {
                std::fs::write(gate.with_extension("waiting"), b"")?;
                while !gate.exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok::<_, std::io::Error>(())
            }
        }),
        Err(_) => service,
    };
    service
        .version("1.2.3")
        .config::<TestConfig>()
        .rpc("hello", hello)
        .rpc("config", config)
        .rpc("sleep", sleep)
        .idempotent()
        .rpc("relay", relay)
        .rpc("announce", announce)
        .rpc("enqueue", enqueue)
        .rpc("crash", crash)
        .rpc("alloc", alloc)
        .rpc("blob", blob)
        .on_shutdown(|_ctx| async {
            tracing::info!("shutdown hook ran");
            eprintln!("shutdown hook ran");
        })
        .run()
}
