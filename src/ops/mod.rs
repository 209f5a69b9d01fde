//! Operations: Prometheus metrics, liveness and readiness over HTTP.
//!
//! `groxy run` with `[proxy] metrics = "ADDR:PORT"` serves
//!
//! * `/metrics`: every metric of [`metrics::Metrics`] and the standard `process_*` ones;
//! * `/healthz`: 200 while the process runs (liveness);
//! * `/readyz`: 200 once the proxy's sockets are bound and it is serving, 503 before and
//!   from the moment a shutdown signal arrives (readiness, so that a load balancer or
//!   Kubernetes stops sending before the sockets close).
//!
//! The metrics are fed by the driver's [`crate::runtime::Observer`] hook: engine events,
//! and the engine itself after each flush for the gauges (exchange table, key
//! generations) and the timing of signature checks.

pub mod http;
pub mod metrics;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::proxy::ProxyConfig;
use crate::runtime::Proxy;

pub use metrics::Metrics;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the proxy has started and is not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The operations endpoint of one proxy: the HTTP server and the readiness it reports.
pub struct Ops {
    server: http::Server,
    health: Arc<Health>,
}

impl Ops {
    /// Binds the endpoint (not ready yet) and makes the metrics for `cfg`; hand the
    /// returned [`Metrics`] to [`Proxy::observe`].
    pub fn start(addr: SocketAddr, cfg: &ProxyConfig) -> io::Result<(Ops, Metrics)> {
        let metrics = Metrics::new(cfg);
        let health = Arc::new(Health::default());
        let server = http::Server::start(addr, metrics.registry(), health.clone())?;
        Ok((Ops { server, health }, metrics))
    }

    /// Where the endpoint listens (the port chosen when `addr` had 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The readiness `/readyz` reports, shared with [`serve`].
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }
}

/// Runs a bound proxy until `shutdown` completes, reporting ready while it serves: from
/// the first poll (its sockets are bound, datagrams queue in the kernel) until the
/// shutdown signal, before the sockets close.
pub async fn serve(
    proxy: Proxy,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    health.set_ready(true);
    let h = health.clone();
    let r = proxy
        .run(async move {
            shutdown.await;
            h.set_ready(false);
        })
        .await;
    health.set_ready(false);
    r
}
