//! Request counts and latencies by matched route, method and status.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};
use metrics::{counter, histogram};

use crate::metric_names;

/// Route-layer middleware: `route` is the matched template, so labels stay bounded.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    record(method, route, &response, started);
    response
}

/// Records a response that no route matched.
pub fn record_unmatched(method: &Method, response: &Response, started: Instant) {
    record(method_label(method), "unmatched".to_owned(), response, started);
}

fn record(method: &'static str, route: String, response: &Response, started: Instant) {
    let status = response.status().as_u16().to_string();
    counter!(metric_names::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    histogram!(metric_names::HTTP_REQUEST_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
