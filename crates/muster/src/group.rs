//! [`Group`]: several services in one process, sharing one bus connection.

use crate::Error;
use crate::runtime::ServiceHandle;
use crate::service::Service;
use crate::transport::SharedTransport;

/// Services run together in one process (the seeds' thread-type task
/// services, service_framework's inline services). With a config file,
/// each service reads the table named after it, or the whole file when it
/// has none.
///
/// ```no_run
/// use muster::prelude::*;
/// fn main() -> muster::Result<()> {
///     Group::new()
///         .service(Service::new("a").rpc("ping", || async { "a" }))
///         .service(Service::new("b").rpc("ping", || async { "b" }))
///         .run()
/// }
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct Group {
    services: Vec<Service>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service.
    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// Runs every service with the standard command line (see
    /// [`Service::run`]); `-m` runs the main functions and the group exits
    /// when the first one returns.
    ///
    /// # Errors
    /// As [`Service::run`].
    pub fn run(self) -> crate::Result<()> {
        crate::cli::run(self.services, std::env::args().collect())
    }

    /// Starts every service in the background on one transport.
    ///
    /// # Errors
    /// The first service that fails to start; those already started are
    /// stopped.
    pub async fn start(self, transport: SharedTransport) -> Result<Vec<ServiceHandle>, Error> {
        let mut handles = Vec::new();
        for s in self.services {
            match s.start(transport.clone()).await {
                Ok(h) => handles.push(h),
                Err(e) => {
                    for h in handles {
                        h.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(handles)
    }
}
