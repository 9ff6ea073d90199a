//! Every endpoint and every error row of the HTTP API, over real HTTP, with
//! the real Redis and Kafka behind it.

use std::time::Duration;

use harness::client::ApiClient;
use harness::infra::LocalService;
use harness::stack::{isolated_config, Stack};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use txengine::http::{router, ApiState};
use txengine::limits::MAX_BODY_BYTES;
use txengine::limits::MAX_MINOR_UNITS;
use txengine::publisher::{Publisher, PublisherSettings};
use txengine::store::{Store, StoreSettings};

use crate::isolated_store;

const SETTLE: Duration = Duration::from_secs(30);

async fn stack(name: &str) -> Stack {
    Stack::start(crate::infra(), name)
        .await
        .expect("engine starts")
}

fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "body: {body}");
    assert_eq!(body["status"], expected.as_u16(), "problem body: {body}");
    assert!(
        body["type"]
            .as_str()
            .unwrap_or("")
            .starts_with("urn:txengine:problem:"),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn post_is_accepted_applied_and_read_back() {
    let s = stack("e2e").await;
    s.set_balance("alice", 100).await.unwrap();
    s.set_balance("bob", 5).await.unwrap();

    let response = s
        .http
        .post(s.url("/transactions"))
        .json(&json!({"id": "t-1", "type": "transfer", "account": "alice", "to": "bob", "amount": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["location"], "/transactions/t-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "t-1");
    assert!(
        body["status"] == "pending" || body["status"] == "applied",
        "{body}"
    );

    let settled = s.wait_settled(&["t-1".into()], SETTLE).await.unwrap();
    assert_eq!(
        settled["t-1"],
        json!({"id": "t-1", "status": "applied", "balance_after": 40,
            "asset": s.config.default_asset.as_str(),
            "type": "transfer", "account": "alice", "to": "bob", "amount": 60})
    );
    assert_eq!(s.balance("alice").await.unwrap(), Some(40));
    assert_eq!(s.balance("bob").await.unwrap(), Some(65));

    // Debit (the default type, on the seed's path) and credit.
    let (status, _) = s
        .post(&json!({"id": "t-2", "account": "bob", "amount": 65}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let seed_path = s
        .http
        .post(s.url("/transaction"))
        .json(&json!({"id": "t-3", "type": "credit", "account": "alice", "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(seed_path.status(), StatusCode::ACCEPTED);
    let settled = s
        .wait_settled(&["t-2".into(), "t-3".into()], SETTLE)
        .await
        .unwrap();
    assert_eq!(settled["t-2"]["balance_after"], 0);
    assert_eq!(settled["t-3"]["balance_after"], 41);
    assert_eq!(s.balance("bob").await.unwrap(), Some(0));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn rejections_are_final_outcomes_not_errors() {
    let s = stack("reject").await;
    s.set_balance("poor", 3).await.unwrap();
    s.set_balance("full", MAX_MINOR_UNITS).await.unwrap();
    for (id, body) in [
        ("r-1", json!({"id": "r-1", "account": "poor", "amount": 4})),
        (
            "r-2",
            json!({"id": "r-2", "account": "nobody", "amount": 1}),
        ),
        (
            "r-3",
            json!({"id": "r-3", "type": "credit", "account": "full", "amount": 1}),
        ),
        (
            "r-4",
            json!({"id": "r-4", "type": "transfer", "account": "poor", "to": "nobody", "amount": 1}),
        ),
    ] {
        let (status, _) = s.post(&body).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{id}");
    }
    let ids: Vec<String> = (1..=4).map(|i| format!("r-{i}")).collect();
    let settled = s.wait_settled(&ids, SETTLE).await.unwrap();
    let reasons: Vec<&str> = ids
        .iter()
        .map(|id| settled[id]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "insufficient_funds",
            "unknown_account",
            "balance_overflow",
            "unknown_account"
        ]
    );
    assert!(settled.values().all(|v| v["status"] == "rejected"));
    assert_eq!(s.balance("poor").await.unwrap(), Some(3));
    assert_eq!(
        s.balance("full").await.unwrap(),
        Some(MAX_MINOR_UNITS as i64)
    );
    assert_eq!(
        s.balance("nobody").await.unwrap(),
        None,
        "a rejection creates no account"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn same_id_is_never_applied_twice() {
    let s = stack("idem").await;
    s.set_balance("acct", 100).await.unwrap();
    let body = json!({"id": "same", "account": "acct", "amount": 10});
    let (first, _) = s.post(&body).await.unwrap();
    assert_eq!(first, StatusCode::ACCEPTED);
    s.wait_settled(&["same".into()], SETTLE).await.unwrap();

    // Same id, same body: 200 with the outcome, nothing applied again.
    let (status, view) = s.post(&body).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        view,
        json!({"id": "same", "status": "applied", "balance_after": 90})
    );

    // Same id, different body: 422, nothing published.
    let (status, problem) = s
        .post(&json!({"id": "same", "account": "acct", "amount": 11}))
        .await
        .unwrap();
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);

    // The Idempotency-Key header is the id too.
    let via_header = s
        .http
        .post(s.url("/transactions"))
        .header("Idempotency-Key", "same")
        .json(&json!({"account": "acct", "amount": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), StatusCode::OK);

    // Give a wrongly published record time to be applied before checking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.balance("acct").await.unwrap(), Some(90));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn id_comes_from_header_or_is_generated() {
    let s = stack("ids").await;
    s.set_balance("acct", 100).await.unwrap();
    let response = s
        .http
        .post(s.url("/transactions"))
        .header("Idempotency-Key", "from-header")
        .json(&json!({"account": "acct", "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["location"], "/transactions/from-header");

    let (status, body) = s
        .post(&json!({"account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let generated = body["id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&generated).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7);

    let mismatch = s
        .http
        .post(s.url("/transactions"))
        .header("Idempotency-Key", "one")
        .json(&json!({"id": "two", "account": "acct", "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let settled = s
        .wait_settled(&["from-header".into(), generated], SETTLE)
        .await
        .unwrap();
    assert!(settled.values().all(|v| v["status"] == "applied"));
    assert_eq!(s.balance("acct").await.unwrap(), Some(98));
    let (status, _) = s.get("/transactions/one").await.unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused request leaves no record"
    );
    s.stop().await.unwrap();
}

/// A second request for an id whose first request is still publishing gets
/// 409. The first request is played by a claim taken directly in Redis, as a
/// second API instance would.
#[tokio::test]
async fn same_id_in_flight_is_409() {
    let s = stack("inflight").await;
    let store = Store::connect(StoreSettings {
        topology: txengine::config::RedisTopology::Single,
        url: &s.config.redis_url,
        namespace: &s.config.namespace,
        outcome_ttl_secs: 60,
        history_keep_secs: 60,
        lease_ms: 30_000,
        response_timeout: Duration::from_secs(5),
        default_asset: Default::default(),
    })
    .await
    .unwrap();
    let tx = txengine::domain::Transaction {
        asset: None,
        metadata: Default::default(),
        id: txengine::domain::TxId::parse("busy").unwrap(),
        movement: txengine::domain::Movement::new(
            txengine::domain::Kind::Debit,
            txengine::domain::AccountId::parse("acct").unwrap(),
            None,
            txengine::domain::Amount::new(5).unwrap(),
        )
        .unwrap(),
    };
    assert!(matches!(
        store.claim(&tx, &Store::lease_token()).await.unwrap(),
        txengine::store::Claim::Claimed
    ));
    let (status, problem) = s
        .post(&json!({"id": "busy", "account": "acct", "amount": 5}))
        .await
        .unwrap();
    assert_problem(status, &problem, StatusCode::CONFLICT);
    let (status, problem) = s
        .post(&json!({"id": "busy", "account": "acct", "amount": 6}))
        .await
        .unwrap();
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = s.get("/transactions/busy").await.unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a claim is not an accepted transaction"
    );
    s.stop().await.unwrap();
}

/// Each way a request can be refused before anything is published: the
/// status, a problem+json body, and no record and no balance change after.
#[rstest]
#[case::malformed_json(
    r#"{"account": "acct", "amount": 1"#,
    "application/json",
    StatusCode::BAD_REQUEST
)]
#[case::amount_as_string(
    r#"{"account": "acct", "amount": "1"}"#,
    "application/json",
    StatusCode::BAD_REQUEST
)]
#[case::unknown_field(
    r#"{"account": "acct", "amount": 1, "memo": "x"}"#,
    "application/json",
    StatusCode::BAD_REQUEST
)]
#[case::not_an_object(r#"[1, 2]"#, "application/json", StatusCode::BAD_REQUEST)]
#[case::not_json_content_type(
    r#"{"account": "acct", "amount": 1}"#,
    "text/plain",
    StatusCode::UNSUPPORTED_MEDIA_TYPE
)]
#[case::amount_zero(
    r#"{"account": "acct", "amount": 0}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::amount_negative(
    r#"{"account": "acct", "amount": -5}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::amount_fraction(
    r#"{"account": "acct", "amount": 1.5}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::amount_two_pow_53(
    r#"{"account": "acct", "amount": 9007199254740992}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::amount_huge(
    r#"{"account": "acct", "amount": 1e300}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::amount_missing(
    r#"{"account": "acct"}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::account_missing(
    r#"{"amount": 1}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::account_bad_chars(
    r#"{"account": "a b", "amount": 1}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::account_too_long(&format!(r#"{{"account": "{}", "amount": 1}}"#, "a".repeat(65)), "application/json", StatusCode::UNPROCESSABLE_ENTITY)]
#[case::id_bad_chars(
    r#"{"id": "x/y", "account": "acct", "amount": 1}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::unknown_type(
    r#"{"type": "refund", "account": "acct", "amount": 1}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::transfer_without_to(
    r#"{"type": "transfer", "account": "acct", "amount": 1}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::transfer_to_self(
    r#"{"type": "transfer", "account": "acct", "to": "acct", "amount": 1}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::debit_with_to(
    r#"{"type": "debit", "account": "acct", "to": "other", "amount": 1}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::body_too_large(&format!(r#"{{"account": "acct", "amount": 1, "pad": "{}"}}"#, "x".repeat(MAX_BODY_BYTES)), "application/json", StatusCode::PAYLOAD_TOO_LARGE)]
#[tokio::test]
async fn refused_requests_publish_and_write_nothing(
    #[case] body: &str,
    #[case] content_type: &str,
    #[case] expected: StatusCode,
) {
    let s = stack("refuse").await;
    s.set_balance("acct", 50).await.unwrap();
    let response = s
        .http
        .post(s.url("/transactions"))
        .header("content-type", content_type)
        .header("Idempotency-Key", "refused")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_problem(status, &problem, expected);
    // A valid request after it proves the pipeline ran; the refused one left nothing.
    let (status, _) = s
        .post(&json!({"id": "valid", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    s.wait_settled(&["valid".into()], SETTLE).await.unwrap();
    let (status, _) = s.get("/transactions/refused").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(s.balance("acct").await.unwrap(), Some(49));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn reads_of_unknown_things_are_404_and_bad_ids_422() {
    let s = stack("reads").await;
    let (status, problem) = s.get("/transactions/never-seen").await.unwrap();
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
    let (status, problem) = s.get("/balance/nobody").await.unwrap();
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
    let (status, problem) = s.get("/balance/bad%20id").await.unwrap();
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let s = stack("routes").await;
    let (status, problem) = s.get("/no/such/route").await.unwrap();
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
    let response = s.http.delete(s.url("/transactions")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let status = response.status();
    let problem: Value = response.json().await.unwrap();
    assert_problem(status, &problem, StatusCode::METHOD_NOT_ALLOWED);
    s.stop().await.unwrap();
}

/// The document the engine serves is the one committed beside the code, so a
/// change to the API shows up in review (and schemathesis tests what is served).
#[tokio::test]
async fn served_openapi_document_is_the_committed_copy() {
    let s = stack("openapi").await;
    let response = s.http.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.unwrap();
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../service/openapi.json");
    let committed = std::fs::read_to_string(committed_path).unwrap();
    assert!(
        served == committed,
        "service/openapi.json is stale: run `cargo run -p txengine -- openapi > service/openapi.json`"
    );
    let document: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    for path in [
        "/transactions",
        "/transaction",
        "/transactions/{id}",
        "/balance/{account}",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn balance_setter_needs_the_admin_token() {
    let s = stack("admin").await;
    // Not the stack's client: it sends its API key, which is no admin token.
    let http = reqwest::Client::new();
    let put = |token: Option<&str>, body: Value| {
        let mut request = http.put(s.url("/balance/acct")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = put(None, json!({"balance": 5})).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        put(Some("wrong"), json!({"balance": 5}))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.balance("acct").await.unwrap(),
        None,
        "refused setters write nothing"
    );

    let token = s.admin_token.clone();
    for bad in [
        json!({"balance": -1}),
        json!({"balance": MAX_MINOR_UNITS + 1}),
        json!({"balance": 1.5}),
    ] {
        assert_eq!(
            put(Some(&token), bad).await.unwrap().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    assert_eq!(
        put(Some(&token), json!({"balance": "5"}))
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    let ok = put(Some(&token), json!({"balance": MAX_MINOR_UNITS}))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        s.balance("acct").await.unwrap(),
        Some(MAX_MINOR_UNITS as i64)
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let s = stack("ops").await;
    let (status, body) = s.get("/health").await.unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, mut body) = s.get("/ready").await.unwrap();
    // The backlog shows once the watcher has read it (a race with the
    // start): when it does, nothing is behind.
    if let Some(backlog) = body.as_object_mut().and_then(|b| b.remove("backlog")) {
        assert_eq!(
            (&backlog["records"], &backlog["shedding"]),
            (&json!(0), &json!(false))
        );
    }
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"redis": true, "kafka": true}))
    );
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("txengine_http_requests_total"),
        "{metrics}"
    );
    s.stop().await.unwrap();
}

/// Serves the real router on an ephemeral port with a given publisher; a
/// client for it with an API key for every account.
/// A publisher whose brokers are a free port where nothing listens: every
/// publish fails once `publish_timeout` has passed.
pub(crate) fn unreachable_kafka(topic: &str, publish_timeout: Duration) -> Publisher {
    let dead_port = harness::infra::process::free_port().unwrap();
    Publisher::new(PublisherSettings {
        brokers: &format!("127.0.0.1:{dead_port}"),
        topic,
        max_in_flight: 100,
        publish_timeout,
        linger: Duration::from_millis(1),
    })
    .unwrap()
}

pub(crate) async fn serve(store: Store, publisher: Publisher) -> ApiClient {
    let (id, secret) = txengine::keys::generate();
    let key = txengine::keys::ApiKey {
        secret_hash: txengine::keys::hash_secret(&secret),
        id,
        scope: txengine::keys::Scope::parse(&["*"]).unwrap(),
        limit: None,
        created_at_ms: 0,
    };
    assert!(store.create_key(&key).await.unwrap());
    let mut config = txengine::Config::defaults();
    config.retry_after_secs = 2;
    config.admin_token = None;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let state = ApiState::from_config(&config, store, publisher, None, metrics).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Served as the engine serves it, with its connection limits; the
    // server runs until the test ends.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep_running = stop;
        txengine::server::serve_until_shutdown(
            listener,
            router(state),
            txengine::server::ConnectionLimits::from_config(&config),
            stopped,
        )
        .await
    });
    ApiClient::new(&url, "", Duration::from_secs(30))
        .unwrap()
        .with_api_key(&secret)
        .unwrap()
}

async fn post_raw(api: &ApiClient, body: Value) -> reqwest::Response {
    api.http
        .post(api.url("/transactions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn assert_503(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
    let problem: Value = response.json().await.unwrap();
    assert_problem(
        StatusCode::SERVICE_UNAVAILABLE,
        &problem,
        StatusCode::SERVICE_UNAVAILABLE,
    );
}

/// Kafka unreachable: 503 + Retry-After once the publish times out; the
/// lease is released, so a retry is not a 409, nothing is recorded as
/// accepted, and the id stays bound to that body (the record may still land).
#[tokio::test]
async fn kafka_unreachable_is_503_and_records_nothing() {
    let infra = crate::infra();
    let config = isolated_config(infra, "nokafka");
    let store = isolated_store(&config.namespace, &infra.redis_url).await;
    let publisher = unreachable_kafka(&config.topic, Duration::from_millis(1500));
    let api = serve(store.clone(), publisher).await;
    for _ in 0..2 {
        assert_503(post_raw(&api, json!({"id": "lost", "account": "acct", "amount": 1})).await)
            .await;
    }
    let other_body = post_raw(&api, json!({"id": "lost", "account": "acct", "amount": 2})).await;
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let status = store
        .status(&txengine::domain::TxId::parse("lost").unwrap())
        .await
        .unwrap();
    assert_eq!(status, None);
}

/// A full producer queue answers 503 at once instead of buffering.
#[tokio::test]
async fn full_producer_queue_is_503() {
    let infra = crate::infra();
    let config = isolated_config(infra, "full");
    let store = isolated_store(&config.namespace, &infra.redis_url).await;
    let publisher = Publisher::new(PublisherSettings {
        brokers: &infra.kafka_brokers,
        topic: &config.topic,
        max_in_flight: 0,
        publish_timeout: Duration::from_secs(5),
        linger: Duration::from_millis(1),
    })
    .unwrap();
    let api = serve(store, publisher).await;
    let started = std::time::Instant::now();
    assert_503(post_raw(&api, json!({"id": "x", "account": "acct", "amount": 1})).await).await;
    // At once, not after the publish timeout (5 s): a generous bound.
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
}

/// Redis unreachable: 503 + Retry-After.
#[tokio::test(flavor = "multi_thread")]
async fn redis_unreachable_is_503() {
    let infra = crate::infra();
    let mut redis = harness::infra::LocalRedis::start("always").unwrap();
    let store = isolated_store("noredis", &redis.url()).await;
    let publisher = Publisher::new(PublisherSettings {
        brokers: &infra.kafka_brokers,
        topic: "unused",
        max_in_flight: 10,
        publish_timeout: Duration::from_secs(5),
        linger: Duration::from_millis(1),
    })
    .unwrap();
    let api = serve(store, publisher).await;
    tokio::task::block_in_place(|| redis.kill());
    assert_503(post_raw(&api, json!({"id": "x", "account": "acct", "amount": 1})).await).await;
}

/// A 503 after the claim names the transaction: the request had no id, the
/// server made one, and the publish timed out (the record may still land),
/// so the problem's `id` and `Location` give it, and the client's retry
/// with it (here through a healthy API on the same topic and Redis) is
/// applied once.
#[tokio::test]
async fn a_503_names_the_id_it_made_and_the_retry_with_it_applies_once() {
    let infra = crate::infra();
    let config = isolated_config(infra, "named503");
    let store = isolated_store(&config.namespace, &infra.redis_url).await;
    let stalled_kafka = unreachable_kafka(&config.topic, Duration::from_millis(500));
    let api = serve(store, stalled_kafka).await;
    let body = json!({"account": "acct", "amount": 3});
    let response = post_raw(&api, body.clone()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let problem: Value = response.json().await.unwrap();
    let id = problem["id"].as_str().expect("the problem names the id");
    assert_eq!(location, format!("/transactions/{id}"));
    assert!(
        problem["detail"].as_str().unwrap().contains(id),
        "{problem}"
    );
    assert_eq!(id.len(), 36, "a UUID the server made: {id}");

    let healthy = Stack::start_with(config).await.unwrap();
    healthy.set_balance("acct", 10).await.unwrap();
    let mut retry = body.clone();
    retry["id"] = json!(id);
    for _ in 0..2 {
        let (status, answer) = healthy.post(&retry).await.unwrap();
        assert!(status.is_success(), "{status} {answer}");
    }
    let settled = healthy
        .wait_settled(&[id.to_owned()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(settled[id]["balance_after"], 7);
    healthy.wait_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        healthy.balance("acct").await.unwrap(),
        Some(7),
        "applied once"
    );
    healthy.stop().await.unwrap();
}
