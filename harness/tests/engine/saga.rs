//! Transfers between Redis Cluster slots, as sagas: each step straight
//! against the store (redelivered at every point, nothing moves twice), and
//! end to end through HTTP and Kafka (applied, or refused and refunded, and
//! `pending` until the saga ends).

use std::time::Duration;

use harness::infra::Infra;
use harness::stack::Stack;
use serde_json::json;
use txengine::config::RedisTopology;
use txengine::domain::{
    AccountId, Amount, Balance, Movement, Outcome, RejectReason, RuleError, Transaction, TxId,
    TxStatus,
};
use txengine::limits::MAX_MINOR_UNITS;
use txengine::store::{Applied, Layout, Progress, Store, StoreSettings};
use txengine::wire::{Record, SagaStep};

/// The first of `prefix-0`, `prefix-1`, ... whose slot is (or is not) `account`'s.
fn account_in(layout: &Layout, prefix: &str, account: &str, same_slot: bool) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| layout.same_slot(name, account) == same_slot)
        .expect("some name lands there")
}

async fn cluster_store(namespace: &str) -> Store {
    Store::connect(StoreSettings {
        topology: RedisTopology::Cluster,
        url: &Infra::shared_cluster().redis_url,
        namespace,
        outcome_ttl_secs: 3600,
        history_keep_secs: 3600,
        lease_ms: 30_000,
        response_timeout: Duration::from_secs(5),
        default_asset: Default::default(),
    })
    .await
    .expect("redis cluster")
}

fn transfer(id: &str, from: &str, to: &str, amount: u64) -> Record {
    Record {
        tx: Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse(id).unwrap(),
            movement: Movement::new(
                txengine::domain::Kind::Transfer,
                AccountId::parse(from).unwrap(),
                Some(AccountId::parse(to).unwrap()),
                Amount::new(amount).unwrap(),
            )
            .unwrap(),
        },
        accepted_at_ms: 1,
        saga: None,
    }
}

/// Applies `record` twice (a redelivery) and returns the first answer,
/// checking the second is the same, marked a duplicate where it ends.
async fn apply_twice(store: &Store, record: &Record) -> Progress {
    let first = store
        .apply_records(std::slice::from_ref(record))
        .await
        .unwrap();
    let again = store
        .apply_records(std::slice::from_ref(record))
        .await
        .unwrap();
    let first = first.into_iter().next().unwrap();
    let again = again.into_iter().next().unwrap();
    match (&first, again) {
        (Progress::Next(a), Progress::Next(b)) => {
            assert_eq!(*a, b, "a repeated step publishes the same next step")
        }
        (
            Progress::Ended {
                applied,
                recorded,
                asset,
                ..
            },
            Progress::Ended {
                applied: repeat,
                recorded: r,
                asset: a,
                ..
            },
        ) => {
            assert!(
                !applied.duplicate && repeat.duplicate,
                "{applied:?} then {repeat:?}"
            );
            assert_eq!(
                (applied.outcome, *recorded, asset),
                (repeat.outcome, r, &a),
                "a repeat answers as the first"
            );
        }
        (first, again) => panic!("{first:?} then {again:?}"),
    }
    first
}

async fn balance(store: &Store, account: &str) -> Option<u64> {
    store
        .balance(&AccountId::parse(account).unwrap())
        .await
        .unwrap()
        .map(|b| u64::try_from(b.minor_units()).expect("not below 0"))
}

/// The money in flight out of `account` (its record's `held`; absent: 0).
async fn held(store: &Store, account: &str) -> u64 {
    let url = &Infra::shared_cluster().redis_url;
    let conn =
        txengine::store::Connection::open(url, RedisTopology::Cluster, Duration::from_secs(5))
            .await
            .unwrap();
    let layout = store.layout();
    let mut get = redis::cmd("HGET");
    get.arg(layout.account(account)).arg("held");
    let answers: Vec<Option<u64>> = conn
        .run_by_slot(vec![(layout.shard_of(account), get)])
        .await
        .unwrap();
    answers[0].unwrap_or(0)
}

/// Every step of a saga, each applied twice as a redelivery would: the
/// debit holds the money (in flight: out of the source, not yet in the
/// destination), the credit lands it, the release ends the hold; a refused
/// credit is refunded instead. Nothing moves twice, and the outcome reaches
/// the tx record only when the saga ends.
#[tokio::test(flavor = "multi_thread")]
async fn saga_steps_move_money_once_even_when_redelivered() {
    let namespace = format!("saga-{}", uuid::Uuid::new_v4().simple());
    let store = cluster_store(&namespace).await;
    let layout = store.layout().clone();
    let source = "src";
    let to = account_in(&layout, "dst", source, false);
    let near_max = account_in(&layout, "full", source, false);
    let set = |account: String, balance: u64| {
        let store = store.clone();
        async move {
            store
                .set_balance(
                    &AccountId::parse(&account).unwrap(),
                    Balance::new(balance as i64).unwrap(),
                )
                .await
                .unwrap()
                .ensure_set()
                .unwrap()
        }
    };
    set(source.into(), 1_000).await;
    set(to.clone(), 0).await;
    set(near_max.clone(), MAX_MINOR_UNITS - 5).await;

    // Credited: debit, credit, release.
    let record = transfer("t-ok", source, &to, 300);
    assert!(layout.needs_saga(&record.tx));
    let Progress::Next(credit) = apply_twice(&store, &record).await else {
        panic!("the debit goes on")
    };
    let debited = Balance::new(700).unwrap();
    assert_eq!(
        credit.saga,
        Some(SagaStep::Credit {
            debited_balance_after: debited,
            debited_asset: Some(txengine::domain::Asset::default()),
        })
    );
    assert_eq!(
        credit.key().as_str(),
        to,
        "the credit is keyed by the destination"
    );
    assert_eq!(
        (balance(&store, source).await, balance(&store, &to).await),
        (Some(700), Some(0))
    );
    assert_eq!(held(&store, source).await, 300, "300 in flight");
    assert_eq!(
        store.status(&record.tx.id).await.unwrap(),
        None,
        "no outcome before the saga ends"
    );
    let Progress::Next(release) = apply_twice(&store, &credit).await else {
        panic!("the credit goes on")
    };
    assert_eq!(
        release.saga,
        Some(SagaStep::Settle {
            debited_balance_after: debited,
            refused: None
        })
    );
    assert_eq!(release.key().as_str(), source);
    assert_eq!(balance(&store, &to).await, Some(300));
    let Progress::Ended {
        applied,
        recorded,
        asset,
        ..
    } = apply_twice(&store, &release).await
    else {
        panic!("the release ends it")
    };
    assert_eq!(
        applied.outcome,
        Outcome::Applied {
            balance_after: debited
        }
    );
    assert!(!recorded, "the tx record is in another slot than the steps");
    assert_eq!(held(&store, source).await, 0, "nothing in flight");
    assert_eq!(
        asset,
        Some(txengine::domain::Asset::default()),
        "the debited account's"
    );
    store
        .finish(&[(&record.tx, applied.outcome, asset.as_ref(), &[])])
        .await
        .unwrap();
    store
        .finish(&[(
            &record.tx,
            Outcome::rejected(RejectReason::UnknownAccount),
            None,
            &[],
        )])
        .await
        .unwrap();
    let recorded_asset = store.lookup(&record.tx.id).await.unwrap().unwrap().asset;
    assert_eq!(recorded_asset, asset, "the tx record names the asset");
    assert_eq!(
        store.status(&record.tx.id).await.unwrap(),
        Some(TxStatus::Settled(applied.outcome)),
        "the first outcome written stays"
    );

    // Refused credits: unknown destination, and one with no room below 2^53-1.
    for (id, destination, reason) in [
        (
            "t-ghost",
            account_in(&layout, "ghost", source, false),
            RejectReason::UnknownAccount,
        ),
        ("t-full", near_max.clone(), RejectReason::BalanceOverflow),
    ] {
        let record = transfer(id, source, &destination, 10);
        let Progress::Next(credit) = apply_twice(&store, &record).await else {
            panic!("debited")
        };
        assert_eq!(balance(&store, source).await, Some(690));
        let Progress::Next(refund) = apply_twice(&store, &credit).await else {
            panic!("refused, refund follows")
        };
        assert_eq!(
            refund.saga,
            Some(SagaStep::Settle {
                debited_balance_after: Balance::new(690).unwrap(),
                refused: Some(reason)
            })
        );
        let Progress::Ended { applied, .. } = apply_twice(&store, &refund).await else {
            panic!("the refund ends it")
        };
        assert_eq!(applied.outcome, Outcome::rejected(reason));
        assert_eq!(balance(&store, source).await, Some(700), "refunded once");
        assert_eq!(held(&store, source).await, 0);
    }
    assert_eq!(balance(&store, &near_max).await, Some(MAX_MINOR_UNITS - 5));

    // A refused debit ends the saga at once.
    let Progress::Ended {
        applied,
        recorded: false,
        ..
    } = apply_twice(&store, &transfer("t-poor", source, &to, 5_000)).await
    else {
        panic!("a refused debit ends the saga")
    };
    assert_eq!(
        applied,
        Applied {
            outcome: Outcome::rejected(RejectReason::InsufficientFunds),
            duplicate: false
        }
    );

    // An unknown source ends it too, with nothing written but the flag.
    let Progress::Ended { applied, .. } =
        apply_twice(&store, &transfer("t-nobody", "nobody-src", &to, 5)).await
    else {
        panic!("a refused debit ends the saga")
    };
    assert_eq!(
        applied.outcome,
        Outcome::rejected(RejectReason::UnknownAccount)
    );

    // Boundaries: a debit of the whole balance, a credit up to 2^53-1 exactly.
    let exact = account_in(&layout, "exact", &to, false);
    let to_max = account_in(&layout, "tomax", &exact, false);
    set(exact.clone(), 10).await;
    set(to_max.clone(), MAX_MINOR_UNITS - 10).await;
    let record = transfer("t-exact", &exact, &to_max, 10);
    let Progress::Next(credit) = apply_twice(&store, &record).await else {
        panic!("the whole balance can go")
    };
    let Progress::Next(release) = apply_twice(&store, &credit).await else {
        panic!("credited")
    };
    assert_eq!(
        release.saga,
        Some(SagaStep::Settle {
            debited_balance_after: Balance::new(0).unwrap(),
            refused: None
        }),
        "credited up to the maximum exactly"
    );
    assert_eq!(balance(&store, &to_max).await, Some(MAX_MINOR_UNITS));

    // A release or refund with no hold to end (no debit ran) is an error
    // that stalls its partition, never money out of nowhere.
    let orphan = Record {
        saga: Some(SagaStep::Settle {
            debited_balance_after: Balance::new(0).unwrap(),
            refused: Some(RejectReason::UnknownAccount),
        }),
        ..transfer("t-orphan", source, &to, 1)
    };
    let error = store.apply_records(&[orphan]).await.unwrap_err();
    assert!(error.to_string().contains("held"), "{error}");
    assert_eq!(balance(&store, source).await, Some(700));

    // Money in flight counts against a credit's room: with 5 held out of
    // `full`, a credit of 1 to it would leave a refund no room.
    let record = transfer("t-hold", &near_max, source, 5);
    let Progress::Next(_) = apply_twice(&store, &record).await else {
        panic!("debited")
    };
    let credit = Record {
        tx: Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse("c-1").unwrap(),
            movement: Movement::new(
                txengine::domain::Kind::Credit,
                AccountId::parse(&near_max).unwrap(),
                None,
                Amount::new(6).unwrap(),
            )
            .unwrap(),
        },
        accepted_at_ms: 1,
        saga: None,
    };
    let Progress::Ended { applied, .. } = apply_twice(&store, &credit).await else {
        panic!("a credit ends in one script")
    };
    assert_eq!(
        applied.outcome,
        Outcome::rejected(RejectReason::BalanceOverflow)
    );
}

/// Through HTTP and Kafka on a cluster: a transfer between slots is applied
/// by its saga (the outcome's balance_after is the source's after the
/// debit); refused credits are refunded and end `rejected` with the reason;
/// a transfer within one slot still applies in one script. The invariants
/// (sagas ended, nothing in flight, replay per slot) hold afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn transfers_between_slots_end_applied_or_refunded() {
    let infra = Infra::shared_cluster();
    let s = Stack::start(infra, "saga-http").await.unwrap();
    let layout = Layout::new(&s.config.namespace, RedisTopology::Cluster);
    let source = "acct-0";
    let other = account_in(&layout, "acct-b", source, false);
    let near = account_in(&layout, "acct-c", source, true);
    let ghost = account_in(&layout, "nobody", source, false);
    s.set_balance(source, 1_000).await.unwrap();
    s.set_balance(&other, 0).await.unwrap();
    s.set_balance(&near, 0).await.unwrap();
    // One source, so one partition: applied in this order (a refund comes
    // later, through Kafka, so the one-script transfer goes first).
    let bodies = [
        json!({"id": "x-1", "type": "transfer", "account": source, "to": near, "amount": 5}),
        json!({"id": "x-2", "type": "transfer", "account": source, "to": other, "amount": 100}),
        json!({"id": "x-3", "type": "transfer", "account": source, "to": ghost, "amount": 50}),
        json!({"id": "x-4", "type": "transfer", "account": source, "to": other, "amount": 5_000}),
    ];
    for body in &bodies {
        let (status, answer) = s.post(body).await.unwrap();
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
    }
    let ids: Vec<String> = (1..=4).map(|i| format!("x-{i}")).collect();
    let settled = s.wait_settled(&ids, Duration::from_secs(60)).await.unwrap();
    assert_eq!(settled["x-1"]["status"], "applied", "{settled:?}");
    assert_eq!(settled["x-1"]["balance_after"], 995);
    assert_eq!(settled["x-2"]["status"], "applied");
    assert_eq!(settled["x-2"]["balance_after"], 895);
    assert_eq!(settled["x-3"]["status"], "rejected");
    assert_eq!(settled["x-3"]["reason"], "unknown_account");
    assert_eq!(settled["x-4"]["reason"], "insufficient_funds");
    assert_eq!(s.balance(source).await.unwrap(), Some(895));
    assert_eq!(s.balance(&other).await.unwrap(), Some(100));
    assert_eq!(s.balance(&near).await.unwrap(), Some(5));
    assert_eq!(s.balance(&ghost).await.unwrap(), None);
    s.stop().await.unwrap();
}

/// The admin setter leaves room for money in flight: with 300 held out of
/// the source, a balance that the refund would push past 2^53-1 is refused
/// (nothing written), one just below is set, and the refund then lands the
/// balance exactly on the limit. A refund that finds no room anyway (a
/// foreign write) stops with an error and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_setter_and_a_refund_never_pass_the_limit_with_money_in_flight() {
    let namespace = format!("saga-{}", uuid::Uuid::new_v4().simple());
    let store = cluster_store(&namespace).await;
    let layout = store.layout().clone();
    let source = "src";
    let ghost = account_in(&layout, "ghost", source, false);
    let set = |balance: u64| {
        let store = store.clone();
        async move {
            store
                .set_balance(
                    &AccountId::parse(source).unwrap(),
                    Balance::new(balance as i64).unwrap(),
                )
                .await
                .unwrap()
        }
    };
    set(1_000).await.ensure_set().unwrap();
    let Progress::Next(credit) = apply_twice(&store, &transfer("t-1", source, &ghost, 300)).await
    else {
        panic!("debited")
    };
    assert_eq!(held(&store, source).await, 300);
    assert_eq!(
        set(MAX_MINOR_UNITS - 299).await,
        txengine::store::BalanceSet::NoRoom {
            held: 300,
            max: Balance::MAX
        }
    );
    assert_eq!(balance(&store, source).await, Some(700), "nothing written");
    set(MAX_MINOR_UNITS - 300).await.ensure_set().unwrap();
    let Progress::Next(refund) = apply_twice(&store, &credit).await else {
        panic!("refused: unknown destination")
    };
    let Progress::Ended { .. } = apply_twice(&store, &refund).await else {
        panic!("refunded")
    };
    assert_eq!(balance(&store, source).await, Some(MAX_MINOR_UNITS));

    // A foreign write leaves the refund no room: it refuses, writes nothing.
    let Progress::Next(credit) = apply_twice(&store, &transfer("t-2", source, &ghost, 5)).await
    else {
        panic!("debited")
    };
    let Progress::Next(refund) = apply_twice(&store, &credit).await else {
        panic!("refused")
    };
    refund_stops_after_a_foreign_write(&store, &refund, source, MAX_MINOR_UNITS).await;
    assert_eq!(held(&store, source).await, 5, "the hold stays");

    // The same under a cap the account was given: bounds that leave no
    // room for what is in flight are refused, and a refund that finds no
    // room below the cap (a foreign write) stops.
    let capped = "capped";
    let account = AccountId::parse(capped).unwrap();
    let bounds = |max: i64| txengine::domain::AccountChange {
        max_balance: Some(Balance::new(max).unwrap()),
        ..Default::default()
    };
    store
        .put_account(&account, &bounds(1_000))
        .await
        .unwrap()
        .unwrap();
    store
        .set_balance(&account, Balance::new(1_000).unwrap())
        .await
        .unwrap()
        .ensure_set()
        .unwrap();
    let ghost = account_in(&layout, "ghost", capped, false);
    let Progress::Next(credit) = apply_twice(&store, &transfer("t-3", capped, &ghost, 5)).await
    else {
        panic!("debited")
    };
    let refused = store.put_account(&account, &bounds(999)).await.unwrap();
    assert!(
        matches!(refused, Err(RuleError::NoRoomForHeld { held: 5, .. })),
        "{refused:?}"
    );
    let Progress::Next(refund) = apply_twice(&store, &credit).await else {
        panic!("refused")
    };
    refund_stops_after_a_foreign_write(&store, &refund, capped, 1_000).await;
}

/// Sets `account`'s balance to `full` behind the engine's back, then
/// applies `refund`: it must stop with an error, nothing written.
async fn refund_stops_after_a_foreign_write(
    store: &Store,
    refund: &Record,
    account: &str,
    full: u64,
) {
    raw_set_balance(store, account, full).await;
    let error = store
        .apply_records(std::slice::from_ref(refund))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("would pass the account's max"), "{error}");
    assert_eq!(balance(store, account).await, Some(full));
}

/// HSET of an account's balance straight on the cluster (a write the
/// engine did not make).
async fn raw_set_balance(store: &Store, account: &str, value: u64) {
    let url = &Infra::shared_cluster().redis_url;
    let conn =
        txengine::store::Connection::open(url, RedisTopology::Cluster, Duration::from_secs(5))
            .await
            .unwrap();
    let mut set = redis::cmd("HSET");
    set.arg(store.layout().account(account))
        .arg("balance")
        .arg(value);
    let shard = store.layout().shard_of(account);
    let _: Vec<i64> = conn.run_by_slot(vec![(shard, set)]).await.unwrap();
}
