//! The Kafka side of the pipeline: poison records, concurrency on one
//! account, and a consumer group picking up where a stopped one left off.

use std::time::Duration;

use futures::future::join_all;
use harness::stack::Stack;
use std::collections::HashMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::{post_on_broken_account, publish_raw, repair_account};

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

    let poison: [&[u8]; 5] = [
        b"not json at all",
        br#"{"v":0,"id":"ancient"}"#,
        br#"{"v":1,"id":"zero","type":"debit","account":"acct","amount":0,"accepted_at_ms":1}"#,
        br#"{"v":1,"id":"self","type":"transfer","account":"acct","to":"acct","amount":1,"accepted_at_ms":1}"#,
        // A record under an id that was applied with another body (1, not
        // 5): never answered the other's outcome in silence.
        br#"{"v":1,"id":"before","type":"debit","account":"acct","amount":5,"accepted_at_ms":1}"#,
    ];
    for payload in poison {
        publish_raw(&s, "acct", payload).await;
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
    assert_eq!(dead[4].1, txengine::consumer::MISMATCH_REASON);
    let (_, before) = s.get("/transactions/before").await.unwrap();
    assert_eq!(before["balance_after"], 9, "{before}");
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

/// Where each transaction id sits in `topic`: (partition, offset).
fn positions(brokers: &str, topic: &str) -> HashMap<String, (i32, i64)> {
    harness::measure::read_topic(brokers, topic)
        .unwrap()
        .into_iter()
        .filter_map(|m| {
            let record: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).ok()?;
            Some((
                record["id"].as_str()?.to_owned(),
                (m.partition(), m.offset()),
            ))
        })
        .collect()
}

/// The scenarios' judge of "nothing published for a refused request" finds
/// a real leak: a request refused with 422 whose record is then published
/// anyway (on purpose here, as a build that leaked it would) is named.
#[tokio::test]
async fn the_publication_judge_names_a_refused_request_that_was_published() {
    let infra = crate::infra();
    let s = Stack::start(infra, "leak").await.unwrap();
    s.set_balance("acct", 10).await.unwrap();
    let (status, _) = s
        .post(&json!({"id": "ok-1", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = s
        .post(&json!({"id": "refused-1", "account": "acct", "amount": 0}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let published =
        harness::measure::published_transactions(&infra.kafka_brokers, &s.config.topic).unwrap();
    let judge = |published: &HashMap<String, usize>| {
        harness::scenario::publication_failures(published, &["ok-1"], &["refused-1".to_owned()])
    };
    assert!(judge(&published).is_empty(), "{:?}", judge(&published));
    let leaked = txengine::wire::Record {
        tx: txengine::domain::Transaction {
            asset: None,
            metadata: Default::default(),
            id: txengine::domain::TxId::parse("refused-1").unwrap(),
            movement: txengine::domain::Movement::new(
                txengine::domain::Kind::Debit,
                txengine::domain::AccountId::parse("acct").unwrap(),
                None,
                txengine::domain::Amount::new(1).unwrap(),
            )
            .unwrap(),
        },
        accepted_at_ms: 1,
        saga: None,
    };
    publish_raw(&s, "acct", &leaked.encode()).await;
    let published =
        harness::measure::published_transactions(&infra.kafka_brokers, &s.config.topic).unwrap();
    let failures = judge(&published);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("refused-1"), "{failures:?}");
    s.stop().await.unwrap();
}

/// Posts debits on fresh accounts (funded) until ten landed in partitions
/// other than `stalled`; returns their ids.
async fn post_to_other_partitions(s: &Stack, prefix: &str, stalled: i32) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..40 {
        let account = format!("{prefix}-acct-{i}");
        s.set_balance(&account, 10).await.unwrap();
        let id = format!("{prefix}-{i}");
        let (status, body) = s
            .post(&json!({"id": id, "account": account, "amount": 1}))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(id);
    }
    let positions = positions(&s.config.kafka_brokers, &s.config.topic);
    let others: Vec<String> = ids
        .into_iter()
        .filter(|id| positions[id].0 != stalled)
        .collect();
    assert!(
        others.len() >= 10,
        "only {} in other partitions",
        others.len()
    );
    others
}

/// A record of a newer wire version (a newer build published it: not
/// malformed) pauses its own partition, shown by `/ready`; it is not sent
/// to the DLQ, and nothing after it in that partition is applied or
/// skipped, while the other partitions go on. A newer build taking the
/// partition would apply it (here: the engine stops, nothing committed past it).
#[tokio::test]
async fn a_record_of_a_newer_version_pauses_only_its_partition() {
    let infra = crate::infra();
    let s = Stack::start(infra, "newer").await.unwrap();
    s.set_balance("acct", 10).await.unwrap();
    let newer = br#"{"v":9,"id":"from-the-future","type":"debit","account":"acct","amount":1,"accepted_at_ms":1,"hold":"h"}"#;
    let (partition, offset) = publish_raw(&s, "acct", newer).await;
    let (status, _) = s
        .post(&json!({"id": "behind-it", "account": "acct", "amount": 2}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let body = wait_ready_until(&s, "pause shown", |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE && body["stalled"]["partition"] == partition
    })
    .await;
    assert_eq!(body["stalled"]["offset"], offset, "{body}");
    assert!(
        body["stalled"]["error"].as_str().unwrap().contains("newer"),
        "{body}"
    );
    let others = post_to_other_partitions(&s, "around-newer", partition).await;
    let settled = s.wait_settled(&others, SETTLE).await.unwrap();
    assert!(
        settled.values().all(|v| v["status"] == "applied"),
        "{settled:?}"
    );
    let (_, behind) = s.get("/transactions/behind-it").await.unwrap();
    assert_eq!(
        behind["status"], "pending",
        "nothing passes the paused record"
    );
    assert_eq!(s.balance("acct").await.unwrap(), Some(10));
    let group = s.config.group.clone();
    let (brokers, topic) = (s.config.kafka_brokers.clone(), s.config.topic.clone());
    let dlq = s.config.dlq_topic.clone();
    s.stop().await.unwrap();
    let committed = committed_offset(&brokers, &group, &topic, partition);
    assert!(
        committed.is_none_or(|c| c <= offset),
        "committed {committed:?} past the paused record at {offset}"
    );
    assert!(
        dead_letters(&brokers, &dlq).is_empty(),
        "the newer record is not a poison record"
    );
}

/// While Kafka does not take a poison record into the DLQ (the DLQ topic
/// is gone), `/ready` says so and no offset moves past it; once the topic
/// is back, the record lands there and the consumer goes on.
#[tokio::test]
async fn a_dlq_that_refuses_stalls_visibly_until_it_takes_the_record() {
    let infra = crate::infra();
    let s = Stack::start(infra, "dlq-down").await.unwrap();
    s.set_balance("acct", 10).await.unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka_brokers)
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .delete_topics(&[&s.config.dlq_topic], &options)
        .await
        .unwrap();
    publish_raw(&s, "acct", b"poison").await;
    let (status, _) = s
        .post(&json!({"id": "after-poison", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let body = wait_ready_until(&s, "DLQ stall shown", |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["stalled"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("DLQ"))
    })
    .await;
    assert_eq!(body["kafka"], true, "{body}");
    let (_, after) = s.get("/transactions/after-poison").await.unwrap();
    assert_eq!(after["status"], "pending");
    admin
        .create_topics(
            &[NewTopic::new(
                &s.config.dlq_topic,
                1,
                TopicReplication::Fixed(1),
            )],
            &options,
        )
        .await
        .unwrap();
    s.wait_settled(&["after-poison".into()], SETTLE)
        .await
        .unwrap();
    wait_ready_until(&s, "DLQ stall cleared", |status, body| {
        status == StatusCode::OK && body.get("stalled").is_none()
    })
    .await;
    // The record reached the DLQ before anything after it was applied.
    let dead = dead_letters(&infra.kafka_brokers, &s.config.dlq_topic);
    assert_eq!(dead, [b"poison".to_vec()]);
    s.stop().await.unwrap();
}

/// Outcomes kept 20 s: the topic the engine creates keeps a record for
/// less, so by the time the record's flag has expired, the record is gone
/// from the topic (the low watermark passed it) and no replay from offset 0
/// can apply it again. A topic that keeps records as long as the TTL (what
/// the engine used to create) is refused at start, naming the setting.
#[tokio::test]
async fn no_record_outlives_its_flag_and_a_topic_that_would_is_refused() {
    let infra = crate::infra();
    let mut config = harness::stack::isolated_config(infra, "retention");
    config.outcome_ttl_secs = 20;
    config.max_hold_timeout_s = 10;
    config.partitions = 1;
    let s = Stack::start_with(config).await.unwrap();
    s.set_balance("acct", 10).await.unwrap();
    let (status, _) = s
        .post(&json!({"id": "old", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    s.wait_settled(&["old".into()], SETTLE).await.unwrap();
    let flag = txengine::store::Layout::new(&s.config.namespace, s.config.redis_topology).tx("old");
    let client = redis::Client::open(s.config.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&flag)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flag never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka_brokers)
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(&s.config.topic, 0, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        (low, high),
        (1, 1),
        "the flag expired while the topic still holds offsets {low}..{high}"
    );
    s.stop().await.unwrap();

    let old = harness::stack::isolated_config(infra, "old-retention");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka_brokers)
        .create()
        .unwrap();
    let ttl_ms = (old.outcome_ttl_secs * 1000).to_string();
    let topic =
        NewTopic::new(&old.topic, 1, TopicReplication::Fixed(1)).set("retention.ms", &ttl_ms);
    admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap();
    let error = txengine::Engine::start(&old).await.err().expect("refused");
    let error = format!("{error:#}");
    assert!(
        error.contains("segment.ms (604800000) + retention.ms (604800000)"),
        "{error}"
    );
}

/// The group's committed offset of one partition, if any.
fn committed_offset(brokers: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(5))
        .unwrap();
    committed
        .find_partition(topic, partition)
        .and_then(|e| e.offset().to_raw())
        .filter(|offset| *offset >= 0)
}

/// The payloads in a DLQ topic now.
fn dead_letters(brokers: &str, dlq: &str) -> Vec<Vec<u8>> {
    harness::measure::read_topic(brokers, dlq)
        .unwrap()
        .iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

/// Polls `/ready` until `done` holds for its (status, body), or panics.
pub async fn wait_ready_until(
    s: &Stack,
    what: &str,
    done: impl Fn(StatusCode, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (status, body) = s.get_as_admin("/ready").await.unwrap();
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
    // Without the admin token: that a partition is stalled and since when,
    // never the id (a client's idempotency key) or the error.
    let (status, seen) = s.get("/ready").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{seen}");
    assert_eq!(seen["stalled"]["partition"], body["stalled"]["partition"]);
    assert!(
        seen["stalled"]["since"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{seen}"
    );
    assert!(!seen.to_string().contains("refused"), "{seen}");
    assert!(seen["stalled"].get("error").is_none(), "{seen}");
    // Only the stalled record's partition waits: the others go on.
    let stalled_partition = body["stalled"]["partition"].as_i64().unwrap() as i32;
    let others = post_to_other_partitions(&s, "around-stall", stalled_partition).await;
    let settled = s.wait_settled(&others, SETTLE).await.unwrap();
    assert!(
        settled.values().all(|v| v["status"] == "applied"),
        "{settled:?}"
    );

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
