//! The outcomes topic through the whole engine: one event per final
//! outcome (a hold's expiry too), keyed by account, carrying the
//! transaction's metadata; the invariants judge the topic against Redis and
//! catch an event made up and a copy that differs; none with events off.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::stack::{isolated_config, Stack};
use harness::workload::{Kind, Ledger, SentTx};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use serde_json::json;
use txengine::events::{EventStatus, OutcomeEvent};

const SETTLE: Duration = Duration::from_secs(60);

fn sent(id: &str, kind: Kind, account: &str, to: Option<&str>, amount: u64) -> SentTx {
    SentTx {
        id: id.to_owned(),
        kind,
        account: account.to_owned(),
        to: to.map(str::to_owned),
        amount,
        accepted_at_ms: 0,
        hold: None,
        legs: Vec::new(),
    }
}

fn leg(from: &str, to: &str, amount: u64) -> harness::workload::Leg {
    harness::workload::Leg {
        from: from.to_owned(),
        to: to.to_owned(),
        amount,
        asset: None,
    }
}

/// Every event of the topic, decoded, with its record key.
fn events_of(s: &Stack) -> Vec<(String, OutcomeEvent)> {
    use rdkafka::Message;
    harness::measure::read_topic(&s.config.kafka_brokers, &s.config.outcomes_topic)
        .unwrap()
        .iter()
        .map(|m| {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            (
                key,
                OutcomeEvent::decode(m.payload().unwrap_or_default()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_final_outcome_is_an_event_and_the_invariants_judge_the_topic() {
    let infra = crate::infra();
    let s = Stack::start(infra, "events").await.unwrap();
    let (a, b) = ("ev-a", "ev-b");
    s.set_balance(a, 100).await.unwrap();
    s.set_balance(b, 0).await.unwrap();
    let posts = [
        json!({"id": "d-1", "account": a, "amount": 10, "metadata": {"order": "o-1"}}),
        json!({"id": "d-2", "account": a, "amount": 1000}),
        json!({"id": "t-1", "type": "transfer", "account": a, "to": b, "amount": 5}),
        json!({"id": "h-1", "type": "hold", "account": a, "amount": 5, "timeout_s": 1}),
        json!({"id": "p-1", "type": "postings", "postings": [
            {"from": a, "to": b, "amount": 3}, {"from": b, "to": a, "amount": 1}]}),
    ];
    for body in &posts {
        let (status, answer) = s.post(body).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    let ids = posts.map(|p| p["id"].as_str().unwrap().to_owned());
    s.wait_settled(&ids, SETTLE).await.unwrap();
    let started = Instant::now();
    loop {
        let (_, view) = s.get("/transactions/h-1").await.unwrap();
        if view["status"] == "expired" {
            break;
        }
        assert!(started.elapsed() < SETTLE, "the hold never expired: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.wait_drained(SETTLE).await.unwrap();
    let ledger = Ledger {
        start: [(a.to_owned(), 100), (b.to_owned(), 0)].into(),
        accepted: vec![
            sent("d-1", Kind::Debit, a, None, 10),
            sent("d-2", Kind::Debit, a, None, 1000),
            sent("t-1", Kind::Transfer, a, Some(b), 5),
            sent("h-1", Kind::Hold { timeout_s: 1 }, a, None, 5),
            SentTx {
                legs: vec![leg(a, b, 3), leg(b, a, 1)],
                ..sent("p-1", Kind::Postings, a, None, 4)
            },
        ],
        // Made by the seed's setter: the default asset, which every event
        // of theirs must name.
        accounts: [a, b]
            .map(|name| (name.to_owned(), harness::workload::AccountSpec::default()))
            .into(),
        ..Default::default()
    };
    let verdict = harness::invariants::check(infra, &s.config, &ledger)
        .await
        .unwrap();
    assert!(verdict.holds(), "{:?}", verdict.violations);

    let events = events_of(&s);
    let distinct: BTreeSet<(String, &str)> = events
        .iter()
        .map(|(_, e)| (e.tx.id.to_string(), e.status.as_str()))
        .collect();
    let want: BTreeSet<(String, &str)> = [
        ("d-1", "applied"),
        ("d-2", "rejected"),
        ("t-1", "applied"),
        ("h-1", "applied"),
        ("h-1", "expired"),
        ("p-1", "applied"),
    ]
    .map(|(id, status)| (id.to_owned(), status))
    .into();
    assert_eq!(distinct, want, "{events:#?}");
    assert!(events
        .iter()
        .all(|(key, e)| key == a && e.key().as_str() == a));
    let (_, debit) = events
        .iter()
        .find(|(_, e)| e.tx.id.as_str() == "d-1")
        .unwrap();
    assert_eq!(debit.tx.metadata.to_json(), r#"{"order":"o-1"}"#);
    assert_eq!(debit.asset, Some(s.config.default_asset.clone()));
    assert!(events
        .iter()
        .all(|(_, e)| (e.status == EventStatus::Expired) == e.asset.is_none()));
    assert_eq!(
        debit.status,
        EventStatus::Applied {
            balance_after: txengine::domain::Balance::new(90).unwrap()
        }
    );

    // A made-up outcome and a copy that says otherwise are both caught.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.config.kafka_brokers)
        .create()
        .unwrap();
    let (_, transfer) = events
        .iter()
        .find(|(_, e)| e.tx.id.as_str() == "t-1")
        .unwrap();
    let made_up = OutcomeEvent {
        status: EventStatus::Rejected {
            reason: txengine::domain::RejectReason::InsufficientFunds,
            posting: None,
        },
        ..transfer.clone()
    };
    let mut changed = debit.clone();
    changed.tx.metadata = serde_json::from_str(r#"{"order":"o-2"}"#).unwrap();
    // A copy of d-2's event that names another asset, all else the same.
    let (_, refused) = events
        .iter()
        .find(|(_, e)| e.tx.id.as_str() == "d-2")
        .unwrap();
    let other_asset = OutcomeEvent {
        asset: Some(txengine::domain::Asset::parse("EUR/2").unwrap()),
        ..refused.clone()
    };
    for event in [made_up, changed, other_asset] {
        producer
            .send(
                BaseRecord::to(&s.config.outcomes_topic)
                    .key(a)
                    .payload(&event.encode()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let verdict = harness::invariants::check(infra, &s.config, &ledger)
        .await
        .unwrap();
    let caught = |needle: &str| verdict.violations.iter().any(|v| v.contains(needle));
    assert!(
        caught(r#"("t-1", "rejected") for no such outcome"#),
        "{:?}",
        verdict.violations
    );
    assert!(
        caught(r#"("d-1", "applied") published twice, differently"#),
        "{:?}",
        verdict.violations
    );
    assert!(
        caught(r#"("d-2", "rejected") published twice, differently"#),
        "{:?}",
        verdict.violations
    );
    // Events that name another asset than their account holds are caught,
    let mut euros = ledger.clone();
    euros.accounts.insert(
        a.to_owned(),
        harness::workload::AccountSpec {
            asset: "EUR/2".into(),
            ..Default::default()
        },
    );
    // And a postings event whose legs are not the ones sent (judged in
    // the same run: each failing judgement waits out the events' grace).
    let postings = euros.accepted.iter_mut().find(|tx| tx.id == "p-1").unwrap();
    postings.legs[1].amount = 2;
    let verdict = harness::invariants::check(infra, &s.config, &euros)
        .await
        .unwrap();
    let caught = |needle: &str| verdict.violations.iter().any(|v| v.contains(needle));
    for needle in [
        r#"("d-1", "applied") names asset Some("XXX")"#,
        r#"("p-1", "applied"): a posting from ev-a names asset Some("XXX")"#,
        r#"("p-1", "applied") names postings"#,
    ] {
        assert!(caught(needle), "{needle}: {:?}", verdict.violations);
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_events_are_published_when_they_are_off() {
    let infra = crate::infra();
    let mut config = isolated_config(infra, "events-off");
    config.outcome_events = false;
    let s = Stack::start_with(config).await.unwrap();
    s.set_balance("off-a", 10).await.unwrap();
    let (status, answer) = s
        .post(&json!({"id": "off-1", "account": "off-a", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    s.wait_settled(&["off-1".to_owned()], SETTLE).await.unwrap();
    s.wait_drained(SETTLE).await.unwrap();
    let size = harness::measure::topic_size(&s.config.kafka_brokers, &s.config.outcomes_topic);
    assert!(!matches!(size, Ok(n) if n > 0), "{size:?}");
    s.stop().await.unwrap();
}
