//! The HTTP API (axum): the router and its request metrics. One module per
//! concern:
//! - [`problem`]: problem+json errors;
//! - [`auth`]: the admin token, API keys, scopes and the rate limit;
//! - [`keys`]: the admin's key endpoints;
//! - [`transactions`]: `POST /transactions` and the request decoder (public
//!   for the fuzzer);
//! - [`status`]: `GET /transactions/{id}` and the views of a transaction;
//! - [`batch`]: `POST /transactions/batch`, its decoder (public too);
//! - [`accounts`]: accounts (asset, bounds), made and read;
//! - [`balances`]: balance reads and the admin's setter;
//! - [`history`]: an account's history, and its balance at a time;
//! - [`ops`]: health, readiness, metrics, unknown routes;
//! - [`openapi`]: the generated OpenAPI document;
//! - [`console`]: the operator console's files, at `/console`.
//!
//! The HTTP server loop itself (connection limits) is [`crate::server`].

mod accounts;
mod auth;
mod balances;
mod batch;
mod console;
mod history;
mod keys;
mod openapi;
mod ops;
mod problem;
mod status;
mod transactions;

pub use accounts::decode_account_request;
pub use batch::{decode_batch, BatchError, BatchItem};
pub use keys::decode_key_request;
pub use openapi::openapi_document;
pub use ops::metrics_router;
pub use transactions::{decode_transaction, RequestError};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::admission::{Admission, AdmissionSettings, HoldTimeouts};

/// Decodes a request body that must be a JSON object into `T`. serde would
/// also read a struct from a JSON array (its fields by position), a form the
/// API documents nowhere; it is refused, as any other shape is.
pub(super) fn from_json_object<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err("expected a JSON object, not an array".into());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}
use crate::backlog::Backlog;
use crate::config::{Config, RateLimitMode, Secret};
use crate::consumer::ConsumerHealth;
use crate::keys::KeyCache;
use crate::limits::MAX_BACKGROUND_RELEASES;
use crate::publisher::Publisher;
use crate::store::Store;

pub struct ApiState {
    pub store: Store,
    pub publisher: Publisher,
    pub admission: Admission,
    /// The consumers' backlog, for `/ready` (admission sheds by it).
    pub backlog: Backlog,
    /// The consumer of this process (role `all`), for `/ready`.
    pub consumer: Option<ConsumerHealth>,
    pub admin_token: Option<Secret>,
    /// API keys read from Redis, each kept at most `--key-cache-ms`.
    pub keys: KeyCache,
    pub retry_after_secs: u64,
    /// How long a client may take to send a body; then 408.
    pub body_read_timeout: Duration,
    pub metrics: PrometheusHandle,
}

impl ApiState {
    /// The API's state as `config` sets it, around a store and a publisher
    /// (and this process's consumer, for `/ready`): the one way to build it,
    /// for the engine and for tests alike.
    pub fn from_config(
        config: &Config,
        store: Store,
        publisher: Publisher,
        consumer: Option<ConsumerHealth>,
        metrics: PrometheusHandle,
    ) -> anyhow::Result<Arc<Self>> {
        let backlog = Backlog::watch(
            &config.kafka_brokers,
            &config.group,
            &config.topic,
            config.max_backlog_records,
        )?;
        Ok(Arc::new(Self {
            admission: Admission::new(
                store.clone(),
                publisher.clone(),
                backlog.clone(),
                AdmissionSettings {
                    replication: config.claim_replication(),
                    hold_timeouts: HoldTimeouts {
                        default_s: config.hold_timeout_s,
                        max_s: config.max_hold_timeout_s,
                    },
                    enforce_rate_limits: config.rate_limit == RateLimitMode::Enforce,
                    max_background_releases: MAX_BACKGROUND_RELEASES,
                },
            ),
            backlog,
            store,
            publisher,
            consumer,
            admin_token: config.admin_token()?,
            keys: KeyCache::new(Duration::from_millis(config.key_cache_ms)),
            retry_after_secs: config.retry_after_secs,
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
            metrics,
        }))
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/transactions", post(transactions::post_transaction))
        .route(
            "/transaction",
            post(transactions::post_transaction_seed_path),
        )
        .route("/transactions/batch", post(batch::post_batch))
        .route("/transactions/{id}", get(status::get_transaction))
        .route(
            "/balance/{account}",
            get(balances::get_balance).put(balances::put_balance),
        )
        .route(
            "/accounts/{account}",
            get(accounts::get_account).put(accounts::put_account),
        )
        .route(
            "/accounts/{account}/transactions",
            get(history::get_history),
        )
        .route("/admin/keys", post(keys::create_key).get(keys::list_keys))
        .route("/admin/keys/{id}", delete(keys::delete_key))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::render_metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(console::routes())
        .fallback(ops::unknown_route)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

/// Counts requests and times them, by route and status.
async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("txengine_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("txengine_http_request_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
