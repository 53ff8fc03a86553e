//! `muster call`.

use std::process::ExitCode;
use std::time::Duration;

use muster::CallOptions;
use serde_json::Value;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct CallCmd {
    /// SERVICE.METHOD
    target: String,
    /// Params: a JSON object or array (default {}).
    params: Option<String>,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = muster_core::duration::parse)]
    timeout: Duration,
    /// Send to one instance only.
    #[arg(long)]
    instance: Option<String>,
    /// Encode the request as MessagePack.
    #[arg(long)]
    msgpack: bool,
    /// Join this trace: a W3C traceparent (00-TRACEID-SPANID-FLAGS).
    #[arg(long, value_name = "TRACEPARENT")]
    traceparent: Option<String>,
    #[command(flatten)]
    bus: BusArg,
}

impl CallCmd {
    pub(crate) async fn run(self) -> ExitCode {
        crate::init_client_logging();
        let params: Value = match self.params.as_deref() {
            None => Value::Object(Default::default()),
            Some(text) => match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("muster: params are not valid JSON: {e}");
                    return ExitCode::from(2);
                }
            },
        };
        let client = match self.bus.client().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("muster: {e}");
                return ExitCode::FAILURE;
            }
        };
        let client = if self.msgpack {
            client.with_content_type(muster::wire::ContentType::MsgPack)
        } else {
            client
        };
        let mut options = CallOptions::default().timeout(self.timeout);
        if let Some(t) = self.traceparent {
            if muster::wire::TraceContext::parse(&t).is_none() {
                eprintln!(
                    "muster: --traceparent {t:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
                );
                return ExitCode::from(2);
            }
            options = options.traceparent(t);
        }
        if let Some(i) = self.instance {
            options = options.instance(i);
        }
        // Ctrl-C gives the call up: the instance running it is told and
        // stops its handler, instead of running on to the deadline.
        let stop = tokio_util::sync::CancellationToken::new();
        let options = options.cancel_on(stop.clone());
        let interrupt = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupt.cancel();
            }
        });
        let result = client.call_raw(&self.target, &params, options).await;
        client.transport().close().await;
        match result {
            Ok(raw) => {
                println!("{}", raw.get());
                ExitCode::SUCCESS
            }
            Err(e) => {
                let shown = serde_json::to_string(&e).unwrap_or_else(|_| e.to_string());
                eprintln!("{shown}");
                if stop.is_cancelled() {
                    // Interrupted, as a shell counts it (128 + SIGINT).
                    ExitCode::from(130)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    }
}
