//! The manifest as written: serde's view of the TOML, with spans for
//! messages. [`crate::check`] turns it into the model.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::duration::DurationError;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::{Readiness, RestartPolicy, Strategy};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub(crate) host: Option<Spanned<RawHost>>,
    pub(crate) context: RawContext,
    #[serde(default)]
    pub(crate) service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) bus: Option<Spanned<String>>,
    #[serde(alias = "control_bind")]
    pub(crate) bind: Option<String>,
    pub(crate) advertise: Option<String>,
    pub(crate) rpc_ports: Option<Spanned<String>>,
    pub(crate) own_bus: Option<bool>,
    pub(crate) curve: Option<String>,
    pub(crate) plain_tcp: Option<bool>,
    pub(crate) state_dir: Option<String>,
    pub(crate) http: Option<Spanned<String>>,
    pub(crate) monitor_every: Option<Spanned<DurationValue>>,
    pub(crate) gateway_open: Option<bool>,
    pub(crate) queue_max_bytes: Option<Spanned<String>>,
    pub(crate) queue_store: Option<Spanned<String>>,
    pub(crate) queue_fsync: Option<Spanned<String>>,
    pub(crate) heartbeats_per_sec: Option<Spanned<u32>>,
    #[serde(default)]
    pub(crate) http_hosts: Vec<String>,
    pub(crate) http_public_read: Option<bool>,
    pub(crate) log_max_size: Option<Spanned<String>>,
    pub(crate) log_keep: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContext {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) strategy: Strategy,
    pub(crate) max_restarts: Option<u32>,
    pub(crate) within_secs: Option<Spanned<u64>>,
    pub(crate) boot: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) name: Spanned<String>,
    pub(crate) run: Option<Spanned<Vec<String>>>,
    pub(crate) command: Option<Spanned<String>>,
    pub(crate) args: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: Option<Spanned<String>>,
    pub(crate) instances: Option<Spanned<u32>>,
    pub(crate) restart: Option<Spanned<RestartPolicy>>,
    #[serde(default)]
    pub(crate) after: Vec<Spanned<String>>,
    pub(crate) schedule: Option<Spanned<String>>,
    pub(crate) schedule_tz: Option<Spanned<String>>,
    pub(crate) misfire: Option<Spanned<String>>,
    pub(crate) max_rss: Option<Spanned<String>>,
    pub(crate) max_cpu: Option<Spanned<f64>>,
    pub(crate) cpu_window: Option<DurationValue>,
    pub(crate) autostart: Option<bool>,
    pub(crate) stop_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(crate) ready: Readiness,
    pub(crate) ready_timeout: Option<DurationValue>,
    pub(crate) backoff: Option<DurationValue>,
    pub(crate) backoff_max: Option<DurationValue>,
    pub(crate) backoff_reset: Option<DurationValue>,
    pub(crate) on_start: Option<RawActions>,
    pub(crate) on_update: Option<RawActions>,
    pub(crate) on_fail: Option<RawActions>,
    pub(crate) on_exit: Option<RawActions>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawActions {
    #[serde(default)]
    pub(crate) start: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) stop: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) restart: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) exit: bool,
}

/// A duration written as seconds (`5`, `0.5`) or with a unit (`"250ms"`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurationValue(pub(crate) Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let parsed = match Written::deserialize(d)? {
            Written::Int(n) => Ok(Duration::from_secs(n)),
            // Negative, NaN and too large alike (`from_secs_f64` would panic).
            Written::Float(f) => {
                Duration::try_from_secs_f64(f).map_err(|_| DurationError::OutOfRange(f.to_string()))
            }
            Written::Text(s) => muster_core::duration::parse(&s),
        };
        parsed.map(Self).map_err(serde::de::Error::custom)
    }
}
