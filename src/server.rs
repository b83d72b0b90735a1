//! The HTTP server's transport: an accept loop that bounds what a client can
//! hold. Headers must arrive within [`HEADER_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] connections are open (more are closed at once); every
//! request, body included, is answered or cut within [`REQUEST_TIMEOUT`]; the
//! API (not `/metrics`, `/healthz`, `/readyz`) serves at most
//! [`MAX_CONCURRENT_API`] requests at a time. Idle or half-sent connections
//! therefore cost a task each and never delay a scrape.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const MAX_CONNECTIONS: usize = 1024;
pub(crate) const MAX_CONCURRENT_API: usize = 64;
/// How long open connections get to finish once the server stops.
const DRAIN: Duration = Duration::from_secs(2);

/// Serves `router` until `stop` is cancelled, then lets open requests finish
/// for a moment.
pub(crate) async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused == 1 || refused.is_multiple_of(1000) {
                tracing::warn!(
                    refused,
                    max = MAX_CONNECTIONS,
                    "too many open connections; closing new ones"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are a client's (reset, timeout, bad request line).
            let _ = conn.await;
            drop(slot);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {}
    }
}
