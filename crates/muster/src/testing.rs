//! A test harness: run services in one process on the in-memory transport
//! and call them, with no sockets. Time can be paused and advanced with
//! tokio's test clock (`#[tokio::test(start_paused = true)]`).
//!
//! ```
//! use muster::prelude::*;
//! use muster::testing::TestBus;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus = TestBus::new();
//! bus.start(Service::new("math").rpc("double", |Args(x): Args<i64>| async move { x * 2 }))
//!     .await
//!     .unwrap();
//! let r: i64 = bus.client().call("math.double", &21).await.unwrap();
//! assert_eq!(r, 42);
//! # }
//! ```

use std::sync::Arc;

use crate::Error;
use crate::client::Client;
use crate::config::Sources;
use crate::memory::MemoryTransport;
use crate::runtime::{ServiceHandle, StartOptions};
use crate::service::Service;
use crate::transport::SharedTransport;

/// An in-memory bus with a client and the services started on it.
#[derive(Debug, Clone)]
pub struct TestBus {
    transport: SharedTransport,
    client: Client,
}

impl Default for TestBus {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBus {
    /// A fresh bus.
    pub fn new() -> Self {
        Self::on(MemoryTransport::new())
    }

    /// A bus on `memory` (tests of this crate keep a clone to look into it).
    pub(crate) fn on(memory: MemoryTransport) -> Self {
        let transport: SharedTransport = Arc::new(memory);
        Self {
            client: Client::new(transport.clone()),
            transport,
        }
    }

    /// The client for calls and events.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The transport, to start services with options.
    pub fn transport(&self) -> SharedTransport {
        self.transport.clone()
    }

    /// Starts a service with an empty config (its defaults).
    ///
    /// # Errors
    /// As [`Service::start_with`].
    pub async fn start(&self, service: Service) -> Result<ServiceHandle, Error> {
        self.start_with_config(service, serde_json::json!({})).await
    }

    /// Starts a service with the given config value.
    ///
    /// # Errors
    /// As [`Service::start_with`].
    pub async fn start_with_config(
        &self,
        service: Service,
        config: serde_json::Value,
    ) -> Result<ServiceHandle, Error> {
        let sources = Sources {
            file: Some(config),
            ..Default::default()
        };
        service
            .start_with(
                self.transport.clone(),
                StartOptions::default().config(sources),
            )
            .await
    }
}
