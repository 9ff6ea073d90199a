//! Redis's memory: the engine refuses a Redis that may evict keys (an
//! evicted balance or flag is money lost or applied twice), and a Redis
//! that is full refuses the scripts whole: the API answers 503 with
//! nothing accepted, the consumer stalls visibly with nothing lost, and
//! both go on once memory is raised. Each on a Redis of its own, so the
//! other tests never see it full.

use harness::infra::local::LocalRedis;
use harness::stack::{isolated_config, Stack};
use reqwest::StatusCode;
use serde_json::json;
use txengine::domain::{AccountId, Amount, Movement, Transaction, TxId};

use crate::pipeline::wait_ready_until;
use crate::publish_raw;

async fn config_set(url: &str, name: &str, value: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_refuses_a_redis_that_may_evict() {
    let redis = LocalRedis::start("always").unwrap();
    config_set(&redis.url(), "maxmemory-policy", "allkeys-lru").await;
    let mut config = isolated_config(crate::infra(), "evicting");
    config.redis_url = redis.url();
    let refused = Stack::start_with(config.clone())
        .await
        .err()
        .expect("refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("maxmemory-policy allkeys-lru") && message.contains("noeviction"),
        "{message}"
    );
    config_set(&redis.url(), "maxmemory-policy", "noeviction").await;
    let s = Stack::start_with(config)
        .await
        .expect("noeviction is taken");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_stalls_visibly_loses_nothing_and_resumes_when_raised() {
    let redis = LocalRedis::start("always").unwrap();
    let mut config = isolated_config(crate::infra(), "full");
    config.redis_url = redis.url();
    let s = Stack::start_with(config).await.unwrap();
    s.set_balance("acct", 100).await.unwrap();

    // Full: every script that may write is refused before it runs.
    config_set(&redis.url(), "maxmemory", "1").await;
    let (status, body) = s
        .post(&json!({"id": "while-full", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // A record that reached Kafka anyway (an API that claimed it before
    // Redis filled up) waits at its partition, shown in /ready.
    let record = txengine::wire::Record {
        tx: Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse("landed").unwrap(),
            movement: Movement::Debit {
                account: AccountId::parse("acct").unwrap(),
                amount: Amount::new(30).unwrap(),
            },
        },
        accepted_at_ms: 1,
        saga: None,
    };
    let (partition, _) = publish_raw(&s, "acct", &record.encode()).await;
    let ready = wait_ready_until(&s, "the stall shown", |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE && body["stalled"]["partition"] == partition
    })
    .await;
    assert!(
        ready["stalled"]["error"].as_str().unwrap().contains("OOM"),
        "{ready}"
    );

    config_set(&redis.url(), "maxmemory", "0").await;
    let settled = s
        .wait_settled(&["landed".to_owned()], std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(settled["landed"]["status"], "applied", "{settled:?}");
    assert_eq!(s.balance("acct").await.unwrap(), Some(70), "applied once");
    let (status, body) = s.get("/transactions/while-full").await.unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the refused request wrote nothing: {body}"
    );
    let (status, _) = s
        .post(&json!({"id": "after", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    s.wait_settled(&["after".to_owned()], std::time::Duration::from_secs(60))
        .await
        .unwrap();
    s.wait_drained(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    // The paused record's outcome is an event too (published before its
    // offset, as any other's); the refused request has none.
    let events: std::collections::BTreeSet<(String, &str)> =
        harness::measure::read_topic(&s.config.kafka_brokers, &s.config.outcomes_topic)
            .unwrap()
            .iter()
            .map(|m| {
                use rdkafka::Message;
                let event = txengine::events::OutcomeEvent::decode(m.payload().unwrap()).unwrap();
                (event.tx.id.to_string(), event.status.as_str())
            })
            .collect();
    let want = [("after", "applied"), ("landed", "applied")].map(|(id, st)| (id.to_owned(), st));
    assert_eq!(events, want.into(), "the events");
    s.stop().await.unwrap();
}
