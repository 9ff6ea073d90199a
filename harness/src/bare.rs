//! The bare HTTP limit: an axum server that answers every POST /transactions
//! with 202 and does nothing else, and every POST /transactions/batch with
//! one `pending` result per item (it counts the items, nothing more).
//! Measured with the same generator and settings as the engine, it says how
//! much of the machine HTTP alone takes.

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

#[derive(serde::Deserialize)]
struct Items {
    transactions: Vec<serde::de::IgnoredAny>,
}

async fn accept_batch(Json(items): Json<Items>) -> (StatusCode, String) {
    let result = r#"{"id":"bare","status":"pending"}"#;
    let results = vec![result; items.transactions.len()].join(",");
    (StatusCode::OK, format!(r#"{{"results":[{results}]}}"#))
}

pub fn router() -> Router {
    Router::new()
        .route("/transactions", post(accept))
        .route("/transaction", post(accept))
        .route("/transactions/batch", post(accept_batch))
}

/// Serves the bare router on `listen` until SIGINT/SIGTERM.
pub async fn serve(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, router())
        .with_graceful_shutdown(txengine::app::shutdown_signal())
        .await?;
    Ok(())
}
