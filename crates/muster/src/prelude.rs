//! `use muster::prelude::*;` brings what a service file needs.

pub use crate::RpcError;
pub use crate::client::{CallOptions, Client};
pub use crate::ctx::Ctx;
pub use crate::extract::{Args, Config};
pub use crate::group::Group;
pub use crate::schedule::{Misfire, Schedule};
pub use crate::secret::Secret;
pub use crate::service::Service;
pub use crate::wire::Header;
pub use schemars::JsonSchema;
pub use serde::{Deserialize, Serialize};
pub use std::time::Duration;
