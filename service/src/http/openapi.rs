//! The OpenAPI 3.1 document, generated from the handlers (utoipa) and served at `/openapi.json`.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::accounts::{__path_get_account, __path_put_account};
use super::balances::{__path_get_balance, __path_put_balance};
use super::batch::__path_post_batch;
use super::history::__path_get_history;
use super::keys::{__path_create_key, __path_delete_key, __path_list_keys};
use super::ops::{__path_health, __path_ready, __path_render_metrics};
use super::status::__path_get_transaction;
use super::transactions::{__path_post_transaction, __path_post_transaction_seed_path};

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(super) async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

/// The OpenAPI document, as served and as committed in `service/openapi.json`;
/// built once, on first use.
pub fn openapi_document() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
            + "\n"
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "txengine",
        description = "Atomic transaction engine: POST money movements, read outcomes and balances. Money is an integer number of minor units of an account's asset, 1 ..= 2^53-1 per amount; balances -(2^53-1) ..= 2^53-1, each within its account's bounds (by default 0 ..= 2^53-1)."
    ),
    paths(
        post_transaction,
        post_transaction_seed_path,
        post_batch,
        get_transaction,
        get_balance,
        get_account,
        put_account,
        get_history,
        put_balance,
        create_key,
        list_keys,
        delete_key,
        health,
        ready,
        render_metrics,
        openapi_json
    ),
    modifiers(&BearerSchemes)
)]
pub(super) struct ApiDoc;

/// The two bearer schemes: the admin token (balance setter, keys) and API
/// keys (the money endpoints).
pub(super) struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("txk_<key id>_<secret>")
                    .description(Some("An API key made with POST /admin/keys"))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::limits::{MAX_ID_LEN, MAX_MINOR_UNITS, MAX_RATE, MAX_SCOPE_PATTERNS};

    /// The document's bounds are the engine's limits: the schema
    /// attributes are literals, so this is what keeps them from drifting.
    #[test]
    fn the_served_bounds_are_the_named_limits() {
        let document: serde_json::Value =
            serde_json::from_str(super::openapi_document()).expect("JSON");
        let schemas = &document["components"]["schemas"];
        let property = |schema: &str, field: &str| schemas[schema]["properties"][field].clone();
        let history = &document["paths"]["/accounts/{account}/transactions"]["get"]["parameters"];
        let limit = history
            .as_array()
            .and_then(|params| params.iter().find(|p| p["name"] == "limit"))
            .expect("the history's limit parameter");
        assert_eq!(limit["schema"]["maximum"], crate::limits::MAX_HISTORY_PAGE);
        assert_eq!(
            property("TransactionRequest", "amount")["maximum"],
            MAX_MINOR_UNITS
        );
        assert_eq!(
            property("BalanceRequest", "balance")["maximum"],
            MAX_MINOR_UNITS
        );
        assert_eq!(
            property("BalanceView", "balance")["maximum"],
            MAX_MINOR_UNITS
        );
        assert_eq!(
            property("KeyRequest", "accounts")["maxItems"],
            MAX_SCOPE_PATTERNS
        );
        assert_eq!(
            property("TransactionRequest", "postings")["maxItems"],
            crate::limits::MAX_POSTINGS
        );
        assert_eq!(
            property("PostingRequest", "amount")["maximum"],
            MAX_MINOR_UNITS
        );
        assert_eq!(property("KeyRequest", "rate_per_s")["maximum"], MAX_RATE);
        assert_eq!(property("KeyRequest", "burst")["maximum"], MAX_RATE);
        let id_pattern = format!("^[A-Za-z0-9_.:-]{{1,{MAX_ID_LEN}}}$");
        let text = super::openapi_document();
        let patterns = text.matches("\"pattern\": \"^[A-Za-z0-9_.:-]{1,").count();
        assert!(patterns >= 5, "ids are patterned: {patterns}");
        assert_eq!(
            patterns,
            text.matches(&format!("\"pattern\": \"{id_pattern}\""))
                .count(),
            "every id pattern allows {MAX_ID_LEN} characters"
        );
    }
}
