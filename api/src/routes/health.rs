//! Liveness and readiness on the api port (the admin port serves the same).

use axum::{extract::State, routing::get, Router};
use rsvp_contract::runtime::admin::{self, Readiness};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(admin::healthz)).route("/readyz", get(readyz))
}

async fn readyz(State(state): State<AppState>) -> Readiness {
    state.readiness().await
}
