//! Building the application: pool, migrations, cache, listeners and the router.

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use anyhow::Context;
use axum::{
    extract::{DefaultBodyLimit, Request},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use rsvp_contract::runtime::{
    admin::{self, Readiness, ReadinessCheck},
    database, shutdown,
};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::{
    auth::AdminToken,
    cache::Cache,
    coalesce::Writer,
    config::Settings,
    deadline,
    error::{ApiError, MAX_BODY_BYTES},
    http_metrics,
    idempotency::{self, IdempotencySettings},
    metric_names, openapi, routes,
    serve::{self, ConnectionLimits},
    state::AppState,
};

impl AppState {
    pub async fn readiness(&self) -> Readiness {
        let (postgres, redis) = tokio::join!(database::answers(&self.db), self.cache.ping());
        Readiness::default().with("postgres", postgres).with("redis", redis)
    }
}

pub struct Application {
    api_listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    request_timeout: Duration,
    connection_limits: ConnectionLimits,
    idempotency: IdempotencySettings,
    prune_interval: Duration,
}

impl Application {
    /// Connects, migrates and binds; `Settings` with port 0 bind free ports (tests).
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let max_connections = settings.database_max_connections;
        let db = database::connect_and_migrate(settings.common.database_url.expose(), max_connections, "DATABASE_URL")
            .await?;
        let analytics = match &settings.analytics_database_url {
            Some(url) if *url != settings.common.database_url => {
                database::connect_and_migrate(url.expose(), max_connections, "ANALYTICS_DATABASE_URL").await?
            }
            _ => db.clone(),
        };
        let cache = Cache::connect(settings.redis_url.expose(), settings.redis_timeout).context("configuring redis")?;
        if !cache.wait_connected(Duration::from_secs(2)).await {
            tracing::warn!("redis is unreachable: serving reads from postgres until it answers");
        }
        let api_listener = TcpListener::bind(settings.api_addr)
            .await
            .with_context(|| format!("binding API_ADDR {}", settings.api_addr))?;
        let admin_listener = admin::bind(settings.common.admin_addr).await?;
        metric_names::describe();
        let writer = Writer::start(db.clone(), settings.coalescing());
        let state = AppState { db, analytics, cache, admin: AdminToken::new(settings.admin_token.expose()), writer };
        Ok(Self {
            api_listener,
            admin_listener,
            state,
            request_timeout: settings.request_timeout,
            connection_limits: settings.connection_limits(),
            idempotency: settings.idempotency(),
            prune_interval: settings.idempotency_prune_interval,
        })
    }

    pub fn api_port(&self) -> u16 {
        self.api_listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves both ports until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = shutdown::token_cancelled_by(shutdown);
        let readiness_state = self.state.clone();
        let readiness: ReadinessCheck = Arc::new(move || {
            let state = readiness_state.clone();
            Box::pin(async move { state.readiness().await })
        });
        let admin = admin::serve(self.admin_listener, readiness, stop.clone().cancelled_owned());
        let prune = idempotency::prune::run(self.state.db.clone(), self.prune_interval, stop.clone().cancelled_owned());
        let app = router(self.state, self.request_timeout, self.idempotency);
        let api = serve::serve(self.api_listener, app, self.connection_limits, stop.cancelled_owned());
        tracing::info!("rsvp-api serving");
        let ((), admin, ()) = tokio::join!(api, admin, prune);
        admin.context("serving the admin port")?;
        Ok(())
    }
}

pub fn router(state: AppState, request_timeout: Duration, idempotency: IdempotencySettings) -> Router {
    routes::router()
        .route_layer(middleware::from_fn_with_state(idempotency, idempotency::layer))
        .route("/openapi.json", get(openapi::serve))
        .route_layer(middleware::from_fn(http_metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(request_timeout, deadline::enforce))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn method_not_allowed(request: Request) -> Response {
    let started = Instant::now();
    let response = ApiError::MethodNotAllowed.into_response();
    http_metrics::record_unmatched(request.method(), &response, started);
    response
}

async fn not_found(request: Request) -> Response {
    let started = Instant::now();
    let response = ApiError::NotFound("route").into_response();
    http_metrics::record_unmatched(request.method(), &response, started);
    response
}
