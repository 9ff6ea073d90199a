//! The bare HTTP limit: an axum server that answers every POST /transactions
//! with 202 and does nothing else. Measured with the same generator and
//! settings as the engine, it says how much of the machine HTTP alone takes.

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

async fn accept() -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({"id": "bare", "status": "pending"})),
    )
}

pub fn router() -> Router {
    Router::new()
        .route("/transactions", post(accept))
        .route("/transaction", post(accept))
}

/// Serves the bare router on `listen` until SIGINT/SIGTERM.
pub async fn serve(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, router())
        .with_graceful_shutdown(txengine::app::shutdown_signal())
        .await?;
    Ok(())
}
