//! The `echo` service: `echo.shout {text, times?}` answers `{text}`
//! repeated `times` times and publishes the text on `echo.shouted`.

use muster::prelude::*;

/// Arguments of `echo.shout`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Shout {
    /// What to shout.
    pub text: String,
    /// How many times (default 1, at most 1000).
    #[schemars(range(min = 0, max = 1000))]
    pub times: Option<u32>,
}

/// Result of `echo.shout`.
#[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct Echoed {
    /// The text, repeated.
    pub text: String,
}

/// Application error code: `times` over the limit.
pub const TOO_MANY: i64 = 1001;

async fn shout(ctx: Ctx, Args(a): Args<Shout>) -> Result<Echoed, RpcError> {
    let times = a.times.unwrap_or(1);
    if times > 1000 {
        return Err(RpcError::new(TOO_MANY, "times must be at most 1000")
            .with_data(serde_json::json!({ "path": "times", "max": 1000 })));
    }
    ctx.publish("echo.shouted", &a.text).await?;
    tracing::info!(times, "shouted");
    Ok(Echoed {
        text: a.text.repeat(times as usize),
    })
}

async fn echo(Args(v): Args<serde_json::Value>) -> serde_json::Value {
    v
}

/// The service, for `main` and for tests.
pub fn service() -> Service {
    Service::new("echo")
        .version(env!("CARGO_PKG_VERSION"))
        .rpc("shout", shout)
        .rpc("echo", echo)
        .idempotent()
}
