//! The operations HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`. It runs on a thread of its own with its own single-threaded runtime, so a
//! scrape (encoding every series) never delays a datagram on the forwarding thread, and a
//! stuck or slow scraper cannot stall the proxy.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::{Semaphore, oneshot};

use super::Health;

/// Connections served at once; more are closed on accept. A Prometheus server keeps one
/// per target, so this leaves room for a few scrapers and probes, and bounds what a
/// connection flood can hold.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive connections are closed (gracefully) after this long, so that a client
/// holding connections open cannot keep its slots forever; scrapers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The running endpoint; dropping it stops the server and joins its thread.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` now (so a taken port fails `groxy run` at start) and serves on a new
    /// thread.
    pub(crate) fn start(
        addr: SocketAddr,
        registry: Registry,
        health: Arc<Health>,
    ) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("metrics {addr}: {e}")))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("groxy-metrics".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => serve(l, registry, health, stopped).await,
                        Err(e) => tracing::error!(event = "metrics_failed", error = %e),
                    }
                })
            })?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (port 0 resolved).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: Arc<Health>,
    mut stopped: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(event = "metrics_accept_failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let r = respond(&req, &registry, &health);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    // Finish a request in flight, then close: a scrape is never cut off.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
                }
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn respond(req: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = match req.uri().path() {
        "/metrics" => {
            let enc = TextEncoder::new();
            let mut body = Vec::with_capacity(16 * 1024);
            match enc.encode(&registry.gather(), &mut body) {
                Ok(()) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_str(enc.format_type())
                            .expect("the encoder's content type is a valid header"),
                    );
                    r
                }
                Err(e) => {
                    tracing::error!(event = "metrics_encode_failed", error = %e);
                    text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
                }
            }
        }
        // The process answers: it is alive. Nothing else is checked, so a liveness probe
        // never restarts a proxy that is merely busy.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    };
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
