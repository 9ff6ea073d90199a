//! The Kafka side of the pipeline: poison records, concurrency on one
//! account, and a consumer group picking up where a stopped one left off.

use std::time::Duration;

use futures::future::join_all;
use harness::stack::Stack;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::{post_on_broken_account, repair_account};

const SETTLE: Duration = Duration::from_secs(30);

/// Records that cannot be decoded go to the DLQ with the reason in a header;
/// the records around them still apply.
#[tokio::test]
async fn poison_records_go_to_the_dlq_and_the_rest_apply() {
    let infra = crate::infra();
    let s = Stack::start(infra, "poison").await.unwrap();
    s.set_balance("acct", 10).await.unwrap();
    let (status, _) = s
        .post(&json!({"id": "before", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka_brokers)
        .create()
        .unwrap();
    let poison: [&[u8]; 4] = [
        b"not json at all",
        br#"{"v":3,"id":"future"}"#,
        br#"{"v":1,"id":"zero","type":"debit","account":"acct","amount":0,"accepted_at_ms":1}"#,
        br#"{"v":1,"id":"self","type":"transfer","account":"acct","to":"acct","amount":1,"accepted_at_ms":1}"#,
    ];
    for payload in poison {
        producer
            .send(
                FutureRecord::to(&s.config.topic)
                    .key("acct")
                    .payload(payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let (status, _) = s
        .post(&json!({"id": "after", "account": "acct", "amount": 2}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let settled = s
        .wait_settled(&["before".into(), "after".into()], SETTLE)
        .await
        .unwrap();
    assert!(settled.values().all(|v| v["status"] == "applied"));
    assert_eq!(s.balance("acct").await.unwrap(), Some(7));

    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka_brokers)
        .set("group.id", format!("{}-dlq-reader", s.config.group))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&s.config.dlq_topic]).unwrap();
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + SETTLE;
    while dead.len() < poison.len() && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            let reason = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == txengine::consumer::DLQ_REASON_HEADER)
                })
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            dead.push((m.payload().unwrap_or_default().to_vec(), reason));
        }
    }
    assert_eq!(dead.len(), poison.len(), "DLQ holds {dead:?}");
    for ((payload, reason), expected) in dead.iter().zip(poison) {
        assert_eq!(payload.as_slice(), expected);
        assert!(
            !reason.is_empty(),
            "no reason header on {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    s.stop().await.unwrap();
}

/// Many concurrent debits on one account that can pay for exactly `k`:
/// exactly `k` are applied and the rest rejected for insufficient funds.
#[tokio::test]
async fn concurrent_debits_apply_exactly_what_the_balance_allows() {
    let s = Stack::start(crate::infra(), "race").await.unwrap();
    let (k, amount, attempts) = (7u64, 10u64, 100usize);
    s.set_balance("hot", k * amount).await.unwrap();
    let ids: Vec<String> = (0..attempts).map(|i| format!("race-{i}")).collect();
    let bodies: Vec<_> = ids
        .iter()
        .map(|id| json!({"id": id, "account": "hot", "amount": amount}))
        .collect();
    let posts = bodies.iter().map(|body| s.post(body));
    for result in join_all(posts).await {
        assert_eq!(result.unwrap().0, StatusCode::ACCEPTED);
    }
    let settled = s.wait_settled(&ids, SETTLE).await.unwrap();
    let applied = settled
        .values()
        .filter(|v| v["status"] == "applied")
        .count();
    let short = settled
        .values()
        .filter(|v| v["reason"] == "insufficient_funds")
        .count();
    assert_eq!((applied, short), (k as usize, attempts - k as usize));
    assert_eq!(s.balance("hot").await.unwrap(), Some(0));
    s.stop().await.unwrap();
}

/// A stopped engine commits what it applied; a new one in the same group
/// carries on without losing or re-applying anything.
#[tokio::test]
async fn a_restarted_engine_carries_on() {
    let first = Stack::start(crate::infra(), "restart").await.unwrap();
    first.set_balance("acct", 100).await.unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("first-{i}")).collect();
    for id in &ids {
        first
            .post(&json!({"id": id, "account": "acct", "amount": 1}))
            .await
            .unwrap();
    }
    first.wait_settled(&ids, SETTLE).await.unwrap();
    let mut config = first.config.clone();
    first.stop().await.unwrap();

    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = Stack::start_with(config).await.unwrap();
    let (status, view) = second
        .post(&json!({"id": "first-0", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(
        (status, view["status"].as_str()),
        (StatusCode::OK, Some("applied"))
    );
    second
        .post(&json!({"id": "second-0", "account": "acct", "amount": 5}))
        .await
        .unwrap();
    let settled = second
        .wait_settled(&["second-0".into()], SETTLE)
        .await
        .unwrap();
    assert_eq!(settled["second-0"]["balance_after"], 75);
    assert_eq!(second.balance("acct").await.unwrap(), Some(75));
    second.stop().await.unwrap();
}

/// Polls `/ready` until `done` holds for its (status, body), or panics.
async fn wait_ready_until(
    s: &Stack,
    what: &str,
    done: impl Fn(StatusCode, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (status, body) = s.get("/ready").await.unwrap();
        if done(status, &body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: /ready still {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A record Redis refuses (the account's balance key holds a list, so the
/// apply script fails with WRONGTYPE) stalls its partition without being
/// skipped: `/ready` answers 503 naming it, and once the key is fixed the
/// record applies. A stop while stalled ends promptly: shutdown wins over
/// the retries.
#[tokio::test]
async fn a_record_redis_refuses_stalls_visibly_and_applies_once_fixed() {
    let infra = crate::infra();
    let s = Stack::start(infra, "stall").await.unwrap();
    post_on_broken_account(&s, "refused", "broken").await;
    let body = wait_ready_until(&s, "stall shown", |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE && body["stalled"]["id"] == "refused"
    })
    .await;
    assert!(
        body["stalled"]["error"]
            .as_str()
            .unwrap()
            .contains("WRONGTYPE"),
        "{body}"
    );
    assert_eq!(body["redis"], true, "{body}");

    repair_account(&s, "broken", 5).await;
    let settled = s.wait_settled(&["refused".into()], SETTLE).await.unwrap();
    assert_eq!(settled["refused"]["balance_after"], 4);
    wait_ready_until(&s, "stall cleared", |status, body| {
        status == StatusCode::OK && body.get("stalled").is_none()
    })
    .await;

    post_on_broken_account(&s, "refused-2", "broken-2").await;
    wait_ready_until(&s, "second stall shown", |status, _| {
        status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let started = std::time::Instant::now();
    s.stop().await.unwrap();
    // Generous: the retry backoff is at most 2 s; before, the loop never ended.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?} while stalled",
        started.elapsed()
    );
}
