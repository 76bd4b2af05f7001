//! Every request's deadline: `REQUEST_TIMEOUT` after it arrived.
//!
//! The middleware answers 503 at the deadline and makes it known to the code it
//! runs (a task-local), so that a write can answer at that same instant with what
//! became of it (`request_timeout`: not applied; `outcome_unknown`: it may commit)
//! rather than leave the middleware to answer blindly. At one instant the inner
//! timer wins: a timeout polls the future it wraps before its own timer.

use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::time::Instant;

use crate::error::Unavailable;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the request being served, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Runs the request under its deadline; answers 503 when it passes.
pub async fn enforce(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let deadline = Instant::now() + timeout;
    // A write that did not answer by now itself (creating an event) may be committing.
    let reason = match *request.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => Unavailable::RequestTimeout,
        _ => Unavailable::OutcomeUnknown,
    };
    match tokio::time::timeout_at(deadline, DEADLINE.scope(deadline, next.run(request))).await {
        Ok(response) => response,
        Err(_) => crate::error::ApiError::Unavailable(reason).into_response(),
    }
}
