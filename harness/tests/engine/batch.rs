//! `POST /transactions/batch` against the real services: one result per
//! item, each what the single endpoint would say; refusals of the whole
//! request only when it cannot be read; every item applied once, on one
//! Redis and on a Redis Cluster (a batch spanning slots).

use std::time::Duration;

use harness::stack::{isolated_config, Stack};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use txengine::config::RedisTopology;
use txengine::limits::MAX_BATCH_ITEMS;

use crate::isolated_store;

const SETTLE: Duration = Duration::from_secs(60);

/// The results of a batch answer, checked to be one per item.
fn results(status: StatusCode, answer: &Value, items: usize) -> Vec<Value> {
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), items, "{answer}");
    results
}

/// One batch mixing every kind of item, on each topology (on the cluster
/// its ids and accounts span many slots): each item answered as the
/// single endpoint would, in order; each accepted item applied once, the
/// refused ones leaving nothing; a retry of the whole batch changes
/// nothing.
#[rstest]
#[case::single(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_batch_answers_each_item_as_one_request_would(#[case] topology: RedisTopology) {
    let s = Stack::start(crate::infra_of(topology), "batch-mixed")
        .await
        .unwrap();
    for account in ["a-1", "a-2", "a-3", "a-4"] {
        s.set_balance(account, 100).await.unwrap();
    }
    s.set_balance("other", 100).await.unwrap();
    // Settled before the batch: its repeat answers the outcome; another
    // body under its id is a conflict.
    let (status, _) = s
        .post(&json!({"id": "known", "account": "a-1", "amount": 10}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = s
        .post(&json!({"id": "known-2", "account": "a-2", "amount": 10}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    s.wait_settled(&["known".into(), "known-2".into()], SETTLE)
        .await
        .unwrap();
    let key = s.create_key(&["a-*"], None, None).await.unwrap();
    let client = s.with_api_key(&key.secret).unwrap();

    let items = vec![
        json!({"id": "b-debit", "account": "a-1", "amount": 5}),
        json!({"id": "b-transfer", "type": "transfer", "account": "a-2", "to": "a-3", "amount": 30}),
        json!({"id": "b-credit", "type": "credit", "account": "a-4", "amount": 7}),
        json!({"id": "b-poor", "account": "a-3", "amount": 1000}),
        json!({"id": "b-zero", "account": "a-1", "amount": 0}),
        json!({"account": "a-1", "amount": 1}),
        json!({"id": "b-string", "account": "a-1", "amount": "1"}),
        json!({"id": "b-field", "account": "a-1", "amount": 1, "memo": "x"}),
        json!(17),
        json!({"id": "b-scope", "account": "other", "amount": 1}),
        json!({"id": "known", "account": "a-1", "amount": 10}),
        json!({"id": "known", "account": "a-1", "amount": 11}),
        json!({"id": "b-twice", "account": "a-4", "amount": 2}),
        json!({"id": "b-twice", "account": "a-4", "amount": 2}),
        json!({"id": "b-debit", "account": "a-1", "amount": 6}),
        // The other body first, then the bound one: as if sent one by one.
        json!({"id": "known-2", "account": "a-2", "amount": 13}),
        json!({"id": "known-2", "account": "a-2", "amount": 10}),
        // Every further copy answers as the single endpoint would: the
        // bound body its outcome, any other a conflict.
        json!({"id": "known-2", "account": "a-2", "amount": 10}),
        json!({"id": "known-2", "account": "a-2", "amount": 14}),
        json!({"id": "known-2", "account": "a-2", "amount": 13}),
        // An id bound by this batch: its first body binds it.
        json!({"id": "b-new", "account": "a-3", "amount": 3}),
        json!({"id": "b-new", "account": "a-3", "amount": 4}),
        json!({"id": "b-new", "account": "a-3", "amount": 3}),
    ];
    let (status, answer) = client.post_batch(&items).await.unwrap();
    let got = results(status, &answer, items.len());
    let summary: Vec<(Value, Value)> = got
        .iter()
        .map(|r| (r["id"].clone(), r["status"].clone()))
        .collect();
    let expected = [
        ("b-debit", "pending"),
        ("b-transfer", "pending"),
        ("b-credit", "pending"),
        ("b-poor", "pending"),
        ("b-zero", "invalid"),
        ("", "invalid"),
        ("b-string", "invalid"),
        ("b-field", "invalid"),
        ("", "invalid"),
        ("b-scope", "forbidden"),
        ("known", "applied"),
        ("known", "conflict"),
        ("b-twice", "pending"),
        ("b-twice", "pending"),
        ("b-debit", "conflict"),
        ("known-2", "conflict"),
        ("known-2", "applied"),
        ("known-2", "applied"),
        ("known-2", "conflict"),
        ("known-2", "conflict"),
        ("b-new", "pending"),
        ("b-new", "conflict"),
        ("b-new", "pending"),
    ];
    let expected: Vec<(Value, Value)> = expected
        .iter()
        .map(|(id, status)| {
            let id = if id.is_empty() {
                Value::Null
            } else {
                json!(id)
            };
            (id, json!(status))
        })
        .collect();
    assert_eq!(summary, expected, "{answer}");
    assert_eq!(got[10]["balance_after"], 90, "{answer}");
    assert_eq!(got[16]["balance_after"], 90, "{answer}");
    assert_eq!(got[17]["balance_after"], 90, "{answer}");
    for (index, needle) in [(4, "amount"), (5, "`id` is required"), (7, "memo")] {
        let reason = got[index]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(needle), "item {index}: {reason}");
    }

    let accepted: Vec<String> = [
        "b-debit",
        "b-transfer",
        "b-credit",
        "b-poor",
        "b-twice",
        "b-new",
    ]
    .map(str::to_owned)
    .to_vec();
    let settled = s.wait_settled(&accepted, SETTLE).await.unwrap();
    assert_eq!(settled["b-poor"]["reason"], "insufficient_funds");
    s.wait_drained(SETTLE).await.unwrap();
    let balances = [
        ("a-1", 85),
        ("a-2", 60),
        ("a-3", 127),
        ("a-4", 105),
        ("other", 100),
    ];
    for (account, balance) in balances {
        assert_eq!(
            s.balance(account).await.unwrap(),
            Some(balance),
            "{account}"
        );
    }
    for refused in ["b-zero", "b-string", "b-field", "b-scope"] {
        let (status, _) = s.get(&format!("/transactions/{refused}")).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{refused} left a record");
    }

    // The whole batch again: the accepted items answer their outcomes and
    // nothing moves twice.
    let (status, answer) = client.post_batch(&items).await.unwrap();
    let again = results(status, &answer, items.len());
    assert_eq!(again[0]["status"], "applied", "{answer}");
    assert_eq!(again[3]["status"], "rejected", "{answer}");
    s.wait_drained(SETTLE).await.unwrap();
    for (account, balance) in balances {
        assert_eq!(
            s.balance(account).await.unwrap(),
            Some(balance),
            "{account}"
        );
    }
    s.stop().await.unwrap();
}

/// What makes a batch unreadable refuses it whole, and nothing is done.
#[rstest]
#[case::not_json("{\"transactions\": [", "application/json", StatusCode::BAD_REQUEST)]
#[case::not_a_batch(
    r#"{"account": "acct", "amount": 1}"#,
    "application/json",
    StatusCode::BAD_REQUEST
)]
#[case::items_not_a_list(
    r#"{"transactions": {"id": "x"}}"#,
    "application/json",
    StatusCode::BAD_REQUEST
)]
#[case::empty(
    r#"{"transactions": []}"#,
    "application/json",
    StatusCode::UNPROCESSABLE_ENTITY
)]
#[case::too_many(&too_many_items(), "application/json", StatusCode::PAYLOAD_TOO_LARGE)]
#[case::too_large(&format!(r#"{{"transactions": [], "pad": "{}"}}"#, "x".repeat(txengine::limits::MAX_BATCH_BODY_BYTES)), "application/json", StatusCode::PAYLOAD_TOO_LARGE)]
#[case::not_json_content_type(
    r#"{"transactions": [{"id": "w", "account": "acct", "amount": 1}]}"#,
    "text/plain",
    StatusCode::UNSUPPORTED_MEDIA_TYPE
)]
#[tokio::test]
async fn an_unreadable_batch_is_refused_whole(
    #[case] body: &str,
    #[case] content_type: &str,
    #[case] expected: StatusCode,
) {
    let s = Stack::start(crate::infra(), "batch-refused").await.unwrap();
    s.set_balance("acct", 50).await.unwrap();
    let response = s
        .http
        .post(s.url("/transactions/batch"))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), expected);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let unauthenticated = reqwest::Client::new()
        .post(s.url("/transactions/batch"))
        .json(&json!({"transactions": [{"id": "w", "account": "acct", "amount": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    s.wait_drained(SETTLE).await.unwrap();
    assert_eq!(s.balance("acct").await.unwrap(), Some(50));
    for id in ["w", "t-0"] {
        let (status, _) = s.get(&format!("/transactions/{id}")).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }
    s.stop().await.unwrap();
}

fn too_many_items() -> String {
    let items: Vec<Value> = (0..=MAX_BATCH_ITEMS)
        .map(|i| json!({"id": format!("t-{i}"), "account": "acct", "amount": 1}))
        .collect();
    json!({ "transactions": items }).to_string()
}

/// The rate limit counts items: a key of burst 5 gets its first 5 items
/// through, the rest `rate_limited` with retry advice, and nothing of those
/// is done; the next batch gets only what the key earned since (1 a
/// second: none when it comes within the second, as on an idle machine).
#[tokio::test]
async fn the_rate_limit_counts_items() {
    let s = Stack::start(crate::infra(), "batch-rate").await.unwrap();
    s.set_balance("acct", 100).await.unwrap();
    let key = s.create_key(&["acct"], Some(1), Some(5)).await.unwrap();
    let client = s.with_api_key(&key.secret).unwrap();
    // Items refused before admission (invalid, out of scope) are not counted.
    let refused = [
        json!({"id": "r-bad", "account": "acct", "amount": 0}),
        json!({"id": "r-scope", "account": "other", "amount": 1}),
    ];
    let (status, answer) = client.post_batch(&refused).await.unwrap();
    let got = results(status, &answer, 2);
    assert_eq!(got[0]["status"], "invalid", "{answer}");
    assert_eq!(got[1]["status"], "forbidden", "{answer}");
    let items: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("r-{i}"), "account": "acct", "amount": 1}))
        .collect();
    let first_sent = std::time::Instant::now();
    let response = client
        .http
        .post(client.url("/transactions/batch"))
        .json(&json!({ "transactions": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("retry-after"));
    let left = response.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(left.contains("r=0"), "{left}");
    let answer: Value = response.json().await.unwrap();
    let got = results(StatusCode::OK, &answer, 8);
    let statuses: Vec<&str> = got.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses[..5], ["pending"; 5], "{answer}");
    assert_eq!(statuses[5..], ["rate_limited"; 3], "{answer}");
    assert!(got[7]["retry_after_s"].as_u64().unwrap() >= 1, "{answer}");

    // The first batch's spend came after `first_sent`, so the key has earned
    // at most this many items since (a busy machine can take over a second to
    // get the first batch's records acknowledged).
    let (status, answer) = client.post_batch(&items[5..]).await.unwrap();
    let earned = first_sent.elapsed().as_secs() as usize;
    let got = results(status, &answer, 3);
    let granted = got.iter().take_while(|r| r["status"] == "pending").count();
    assert!(
        granted <= earned,
        "{granted} granted after {earned} s: {answer}"
    );
    assert!(
        got[granted..].iter().all(|r| r["status"] == "rate_limited"),
        "{answer}"
    );

    let ids: Vec<String> = (0..5 + granted).map(|i| format!("r-{i}")).collect();
    s.wait_settled(&ids, SETTLE).await.unwrap();
    s.wait_drained(SETTLE).await.unwrap();
    assert_eq!(s.balance("acct").await.unwrap(), Some(95 - granted as i64));
    if granted < 3 {
        let (status, _) = s.get("/transactions/r-7").await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    s.stop().await.unwrap();
}

/// Kafka unreachable: no item can be taken, so the batch is a 503 with
/// Retry-After; the same batch retried whole through a healthy engine on
/// the same topic and Redis (a publish that failed may still land) is
/// applied once per item.
#[tokio::test]
async fn a_batch_retried_whole_after_a_503_applies_each_item_once() {
    let infra = crate::infra();
    let config = isolated_config(infra, "batch503");
    let store = isolated_store(&config.namespace, &infra.redis_url).await;
    let stalled_kafka = crate::api::unreachable_kafka(&config.topic, Duration::from_millis(500));
    let api = crate::api::serve(store, stalled_kafka).await;
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("u-{i}"), "account": format!("acct-{}", i % 4), "amount": 1}))
        .collect();
    let (status, problem) = api.post_batch(&items).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");

    let healthy = Stack::start_with(config).await.unwrap();
    for i in 0..4 {
        healthy.set_balance(&format!("acct-{i}"), 10).await.unwrap();
    }
    for _ in 0..2 {
        let (status, answer) = healthy.post_batch(&items).await.unwrap();
        let got = results(status, &answer, items.len());
        assert!(
            got.iter()
                .all(|r| r["status"] == "pending" || r["status"] == "applied"),
            "{answer}"
        );
    }
    let ids: Vec<String> = (0..20).map(|i| format!("u-{i}")).collect();
    healthy.wait_settled(&ids, SETTLE).await.unwrap();
    healthy.wait_drained(SETTLE).await.unwrap();
    for i in 0..4 {
        let balance = healthy.balance(&format!("acct-{i}")).await.unwrap();
        assert_eq!(
            balance,
            Some(5),
            "acct-{i}: each of its 5 items applied once"
        );
    }
    healthy.stop().await.unwrap();
}

/// The limiter asked for many at once (a batch's items): it grants the
/// first ones the burst holds, says when one more may come (within one
/// interval: 100 ms at 10/s), grants none while none may go, and counts
/// the next ones once their time came.
#[tokio::test]
async fn spending_many_grants_what_the_burst_holds_and_says_when_more_may_come() {
    let infra = crate::infra();
    let namespace = format!("spend-{}", uuid::Uuid::new_v4().simple());
    let store = isolated_store(&namespace, &infra.redis_url).await;
    let (key, _) = txengine::keys::generate();
    let limit = txengine::keys::RateLimit {
        rate_per_s: 10,
        burst: 5,
    };
    let interval = Duration::from_millis(100);
    let (other, _) = txengine::keys::generate();
    let few = store.spend_many(&other, limit, 2).await.unwrap();
    assert_eq!(
        (few.granted, few.remaining),
        (2, 3),
        "no more than asked: {few:?}"
    );
    let started = std::time::Instant::now();
    let first = store.spend_many(&key, limit, 8).await.unwrap();
    assert_eq!(
        (first.granted, first.allowed, first.remaining),
        (5, true, 0)
    );
    assert!(
        first.retry_after > Duration::ZERO && first.retry_after <= interval,
        "{first:?}"
    );
    // What the key earned since `first` is bounded by the time gone by (a
    // busy machine can take longer than an interval between two calls).
    let earned = |since: std::time::Instant| (since.elapsed().as_millis() / 100) as u64;
    let none = store.spend_many(&key, limit, 3).await.unwrap();
    if earned(started) == 0 {
        assert_eq!((none.granted, none.allowed), (0, false), "{none:?}");
        assert!(none.retry_after > Duration::ZERO && none.retry_after <= interval);
    }
    let before_sleep = std::time::Instant::now();
    tokio::time::sleep(3 * interval).await;
    let later = store.spend_many(&key, limit, 8).await.unwrap();
    // At least the 3 intervals slept (less one for where in its interval the
    // sleep began), at most what all the time since `first` earned, less what
    // `none` already took.
    let most = (earned(started) + 1).saturating_sub(none.granted).min(5);
    assert!(
        later.granted >= 2 && later.granted <= most,
        "{later:?} (at most {most}, slept from {:?})",
        before_sleep.elapsed()
    );
    let all = store.spend_many(&key, limit, 0).await.unwrap();
    assert_eq!(all.granted, 0, "asking for none counts none: {all:?}");
    // Also on a key never used (its TAT would not move: nothing to write;
    // a CI run found the write refused, PX 0, when the key had gone idle).
    let (idle, _) = txengine::keys::generate();
    let none = store.spend_many(&idle, limit, 0).await.unwrap();
    assert_eq!((none.granted, none.remaining), (0, 5), "{none:?}");
}

/// A refused request writes nothing (no write, so no fsync, for a request
/// the limiter turns away): on a Redis of its own, Redis's count of
/// changes stays put while a key over its limit is refused, alone or for
/// a batch's items.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_spend_writes_nothing() {
    let redis = harness::infra::LocalRedis::start("always").unwrap();
    let store = isolated_store("refused", &redis.url()).await;
    let (key, _) = txengine::keys::generate();
    let limit = txengine::keys::RateLimit {
        rate_per_s: 1,
        burst: 2,
    };
    assert_eq!(store.spend_many(&key, limit, 2).await.unwrap().granted, 2);
    let changes = || async {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("rdb_changes_since_last_save:"))
            .map(|n| n.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    let before = changes().await;
    for count in [1, 5, 1] {
        let refused = store.spend_many(&key, limit, count).await.unwrap();
        assert!(!refused.allowed, "{refused:?}");
    }
    assert_eq!(changes().await, before, "a refused spend wrote");
}

/// A batch's claims made again under the same tokens (on a cluster, a
/// batch whose call is retried after some slots answered NOSCRIPT and the
/// others had claimed) are still the batch's: claimed, not `in_flight`;
/// under another token they are in flight.
#[tokio::test]
async fn a_batch_claimed_again_with_its_tokens_is_still_claimed() {
    use txengine::domain::{AccountId, Amount, Movement, Transaction, TxId};
    use txengine::store::{Claim, Store};
    let infra = crate::infra();
    let namespace = format!("reclaim-{}", uuid::Uuid::new_v4().simple());
    let store = isolated_store(&namespace, &infra.redis_url).await;
    let txs: Vec<Transaction> = (0..3)
        .map(|i| Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse(&format!("c-{i}")).unwrap(),
            movement: Movement::new(
                txengine::domain::Kind::Debit,
                AccountId::parse("acct").unwrap(),
                None,
                Amount::new(1 + i).unwrap(),
            )
            .unwrap(),
        })
        .collect();
    let items: Vec<(Transaction, String)> = txs
        .iter()
        .map(|tx| (tx.clone(), Store::lease_token()))
        .collect();
    for _ in 0..2 {
        let claims = crate::each_ok(crate::claim_unlimited(&store, &items).await);
        assert_eq!(claims, vec![Claim::Claimed; 3]);
    }
    let other = Store::lease_token();
    let others: Vec<(Transaction, String)> =
        txs.iter().map(|tx| (tx.clone(), other.clone())).collect();
    let claims = crate::each_ok(crate::claim_unlimited(&store, &others).await);
    assert_eq!(claims, vec![Claim::InFlight; 3]);
}
