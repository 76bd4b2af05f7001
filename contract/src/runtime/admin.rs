//! The admin endpoint every process serves on its own port: `/metrics`, `/healthz`
//! and `/readyz`.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, pin::Pin, sync::Arc, sync::OnceLock};

use anyhow::Context;
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;

/// Histogram buckets for every `*_seconds` metric: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone()
}

/// Whether each dependency answered; ready when all did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Readiness {
    pub checks: BTreeMap<&'static str, DependencyState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyState {
    Up,
    Down,
}

impl Readiness {
    pub fn with(mut self, dependency: &'static str, up: bool) -> Self {
        let state = if up { DependencyState::Up } else { DependencyState::Down };
        self.checks.insert(dependency, state);
        self
    }

    pub fn is_ready(&self) -> bool {
        self.checks.values().all(|s| *s == DependencyState::Up)
    }
}

impl IntoResponse for Readiness {
    fn into_response(self) -> axum::response::Response {
        #[derive(Serialize)]
        struct Body {
            status: &'static str,
            checks: BTreeMap<&'static str, DependencyState>,
        }
        let (code, status) =
            if self.is_ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not_ready") };
        (code, Json(Body { status, checks: self.checks })).into_response()
    }
}

/// Installs the recorder and binds the admin port (port 0 binds a free one, for tests).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    metrics_handle();
    TcpListener::bind(addr).await.with_context(|| format!("binding ADMIN_ADDR {addr}"))
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Checks the process's dependencies for `/readyz`.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<Readiness> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    readiness: ReadinessCheck,
}

/// The admin router; merge it or serve it with [`serve`].
pub fn router(readiness: ReadinessCheck) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics: metrics_handle(), readiness })
}

/// Serves the admin router on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    readiness: ReadinessCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(readiness)).with_graceful_shutdown(shutdown).await
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AdminState>) -> Readiness {
    (state.readiness)().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_dependency_is_up() {
        let all_up = Readiness::default().with("postgres", true).with("redis", true);
        assert!(all_up.is_ready());
        let redis_down = Readiness::default().with("postgres", true).with("redis", false);
        assert!(!redis_down.is_ready());
        assert_eq!(redis_down.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
