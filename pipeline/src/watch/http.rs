//! The watcher's HTTP side: `/metrics` (OpenMetrics text), `/healthz`
//! (200, or 503 with the reasons), `/status` (JSON). Read-only; bind it
//! where your scraper and probes can reach it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::{Shared, Watch};
use crate::run::Cancel;

/// Serves `watch`'s endpoints on `listener` until `stop` fires.
pub async fn serve(
    watch: &Watch,
    listener: tokio::net::TcpListener,
    stop: Cancel,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .with_state(watch.shared());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.render_metrics(),
    )
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.health(chrono::Utc::now()) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", reasons.join("; ")),
        ),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.status(chrono::Utc::now()))
}
