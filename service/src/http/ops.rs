//! Operations: `/health`, `/ready`, `/metrics`, and the answers for unknown routes and methods.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::authorize_admin;
use super::problem::{not_found, Problem};
use super::ApiState;
use crate::consumer::{ConsumerHealth, Stall};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub(super) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether Redis and Kafka answer, and whether this process's consumer is
/// stuck on a record Redis refuses.
#[derive(Serialize, ToSchema)]
pub(super) struct Readiness {
    redis: bool,
    kafka: bool,
    /// The consumers' backlog (records of the topic not yet applied and
    /// stored) and the bound at which the API sheds load; absent when not
    /// watched (`--max-backlog-records 0`) or not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<BacklogShown>,
    /// The record this process's consumer cannot apply (its partition does
    /// not move until it applies); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    stalled: Option<StallShown>,
}

/// The consumers' backlog as `/ready` shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct BacklogShown {
    records: u64,
    max_records: u64,
    /// True while new transactions are refused (503) until it shrinks.
    shedding: bool,
}

/// A stall as `/ready` shows it. The transaction id (a client's
/// idempotency key, which often carries order or customer numbers) and the
/// error are shown only to the admin token; the log and the stall metrics
/// have them for everyone else who operates the engine.
#[derive(Serialize, ToSchema)]
pub(super) struct StallShown {
    topic: String,
    partition: i32,
    offset: i64,
    /// When the stall began (RFC 3339, UTC).
    since: String,
    /// Admin token only: the id of the record held (empty when it is not
    /// one record).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Admin token only: what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl StallShown {
    /// `stall` as shown to the admin token (`to_admin`) or to anyone.
    fn of(stall: Stall, to_admin: bool) -> Self {
        let (id, error) = match to_admin {
            true => (Some(stall.id), Some(stall.error)),
            false => (None, None),
        };
        Self {
            topic: stall.topic,
            partition: stall.partition,
            offset: stall.offset,
            since: super::history::rfc3339(stall.since_ms),
            id,
            error,
        }
    }
}

/// Readiness: Redis and Kafka reachable, no stalled partition.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Both reachable, nothing stalled", body = Readiness),
        (status = 503, description = "Redis or Kafka unreachable, or this process's consumer is stalled on a record (its id and error only with the admin token)", body = Readiness),
    ))]
pub(super) async fn ready(State(api): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let redis = api.store.ping().await.is_ok();
    let kafka = api.publisher.ready().await;
    let to_admin = authorize_admin(&api, &headers).is_ok();
    let stalled = api
        .consumer
        .as_ref()
        .and_then(ConsumerHealth::stall)
        .map(|stall| StallShown::of(stall, to_admin));
    let backlog = match api.backlog.max_records() {
        0 => None,
        max_records => api.backlog.records().map(|records| BacklogShown {
            records,
            max_records,
            shedding: api.backlog.is_over(),
        }),
    };
    let code = if redis && kafka && stalled.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            redis,
            kafka,
            backlog,
            stalled,
        }),
    )
        .into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(super) async fn render_metrics(State(api): State<Arc<ApiState>>) -> Response {
    prometheus_text(&api.metrics)
}

pub(super) fn prometheus_text(handle: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// `/metrics`, `/health` and `/ready` (200, or 503 with the stalled record)
/// for a consumer-only process.
pub fn metrics_router(handle: PrometheusHandle, consumer: ConsumerHealth) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move { prometheus_text(&handle) }),
        )
        .route("/health", get(health))
        .route(
            "/ready",
            // No admin token here: the stall without its id and error.
            get(move || async move {
                let stalled = consumer.stall().map(|stall| StallShown::of(stall, false));
                let code = match stalled {
                    None => StatusCode::OK,
                    Some(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                (code, Json(serde_json::json!({ "stalled": stalled })))
            }),
        )
}

pub(super) async fn unknown_route() -> Problem {
    not_found("no such route; see /openapi.json".to_owned())
}

pub(super) async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method; see the Allow header",
    )
}
