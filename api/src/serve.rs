//! The api's HTTP/1 accept loop: a header-read timeout and a bound on open
//! connections, which `axum::serve` has neither of.
//!
//! Without them a client that opens sockets and sends half a request line holds each
//! one, and its file descriptor, forever: a slowloris needs only sockets. A connection
//! beyond the bound is accepted and closed at once: its client learns it at once and
//! may retry, where waiting in the kernel's listen backlog would leave it hanging (and,
//! once the backlog overflows, lose it without a word).

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use metrics::{counter, gauge};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::metric_names;

/// How long and how many client connections the api keeps.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest a connection may take to send a request's headers; also how long an
    /// idle keep-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// Most client connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
}

/// Serves `app` until `shutdown` resolves, then stops accepting and waits for the
/// open connections to finish their requests.
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, mostly: back off rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counter!(metric_names::HTTP_CONNECTIONS_REJECTED).increment(1);
            drop(stream);
            continue;
        };
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        gauge!(metric_names::HTTP_CONNECTIONS_OPEN).increment(1.0);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                if error.is_timeout() {
                    counter!(metric_names::HTTP_HEADER_READ_TIMEOUTS).increment(1);
                }
                tracing::debug!(%error, "connection closed with an error");
            }
            gauge!(metric_names::HTTP_CONNECTIONS_OPEN).decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
