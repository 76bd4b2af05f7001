//! Shutdown: one `CancellationToken` per process, cancelled by SIGINT or SIGTERM
//! (or by whatever future a test passes), which every loop and server selects on.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A token cancelled once `shutdown` resolves.
pub fn token_cancelled_by(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    token
}

/// Sleeps for `delay`; true when `shutdown` came first.
pub async fn sleep_or_shutdown(delay: std::time::Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Resolves on SIGINT or SIGTERM: the start of a graceful shutdown.
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_token_is_cancelled_when_the_future_resolves() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let token = token_cancelled_by(async move {
            let _ = rx.await;
        });
        assert!(!sleep_or_shutdown(Duration::from_millis(5), &token).await);
        tx.send(()).unwrap();
        assert!(sleep_or_shutdown(Duration::from_secs(10), &token).await);
    }
}
