//! The apply script (`lua/atomic_update.lua`) at its boundaries, straight
//! against the real Redis: no HTTP, no Kafka in the way.

use std::time::Duration;

use harness::infra::LocalService;
use rstest::rstest;
use txengine::domain::TxStatus;
use txengine::domain::{
    AccountId, Amount, Balance, Movement, Outcome, RejectReason, Transaction, TxId,
};
use txengine::limits::MAX_MINOR_UNITS;
use txengine::store::{Acceptance, Applied, Claim, Progress, Store, StoreSettings};

const MAX: u64 = MAX_MINOR_UNITS;

async fn store() -> Store {
    store_with_lease(30_000).await
}

async fn store_with_lease(lease_ms: u64) -> Store {
    let namespace = format!("apply-{}", uuid::Uuid::new_v4().simple());
    store_on(&crate::infra().redis_url, &namespace, lease_ms).await
}

/// A store on a Redis of the test's own (`url`), in `namespace`.
async fn store_at(url: &str, namespace: &str) -> Store {
    store_on(url, namespace, 30_000).await
}

async fn store_on(url: &str, namespace: &str, lease_ms: u64) -> Store {
    Store::connect(StoreSettings {
        topology: txengine::config::RedisTopology::Single,
        url,
        namespace,
        outcome_ttl_secs: 3600,
        history_keep_secs: 3600,
        lease_ms,
        response_timeout: Duration::from_secs(5),
        default_asset: Default::default(),
    })
    .await
    .expect("redis")
}

fn account(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

fn tx(id: &str, kind: &str, to: Option<&str>, amount: u64) -> Transaction {
    Transaction {
        asset: None,
        metadata: Default::default(),
        id: TxId::parse(id).unwrap(),
        movement: Movement::new(
            txengine::domain::Kind::parse(kind).unwrap(),
            account("a"),
            to.map(account),
            Amount::new(amount).unwrap(),
        )
        .unwrap(),
    }
}

async fn set(store: &Store, name: &str, balance: u64) {
    store
        .set_balance(&account(name), Balance::new(balance as i64).unwrap())
        .await
        .unwrap()
        .ensure_set()
        .unwrap();
}

async fn get(store: &Store, name: &str) -> Option<u64> {
    store
        .balance(&account(name))
        .await
        .unwrap()
        .map(|b| u64::try_from(b.minor_units()).expect("not below 0"))
}

fn applied(balance_after: u64) -> Outcome {
    Outcome::Applied {
        balance_after: Balance::new(balance_after as i64).unwrap(),
    }
}

fn rejected(reason: RejectReason) -> Outcome {
    Outcome::rejected(reason)
}

/// One transaction against account `a` (and `b` for transfers), each case
/// naming the starting balances, the movement, the outcome and the balances after.
#[rstest]
#[case::debit_equal_to_balance(Some(5), None, "debit", 5, applied(0), Some(0), None)]
#[case::debit_one_more_than_balance(
    Some(5),
    None,
    "debit",
    6,
    rejected(RejectReason::InsufficientFunds),
    Some(5),
    None
)]
#[case::debit_max_from_max(Some(MAX), None, "debit", MAX, applied(0), Some(0), None)]
#[case::debit_unknown_account(
    None,
    None,
    "debit",
    1,
    rejected(RejectReason::UnknownAccount),
    None,
    None
)]
#[case::credit_up_to_max(Some(MAX - 10), None, "credit", 10, applied(MAX), Some(MAX), None)]
#[case::credit_past_max(Some(MAX - 10), None, "credit", 11, rejected(RejectReason::BalanceOverflow), Some(MAX - 10), None)]
#[case::credit_max_onto_zero(Some(0), None, "credit", MAX, applied(MAX), Some(MAX), None)]
#[case::credit_unknown_account(
    None,
    None,
    "credit",
    1,
    rejected(RejectReason::UnknownAccount),
    None,
    None
)]
#[case::transfer_whole_balance(Some(7), Some(3), "transfer", 7, applied(0), Some(0), Some(10))]
#[case::transfer_short(
    Some(7),
    Some(3),
    "transfer",
    8,
    rejected(RejectReason::InsufficientFunds),
    Some(7),
    Some(3)
)]
#[case::transfer_to_unknown(
    Some(7),
    None,
    "transfer",
    1,
    rejected(RejectReason::UnknownAccount),
    Some(7),
    None
)]
#[case::transfer_from_unknown(
    None,
    Some(3),
    "transfer",
    1,
    rejected(RejectReason::UnknownAccount),
    None,
    Some(3)
)]
#[case::transfer_overflows_destination(
    Some(7),
    Some(MAX),
    "transfer",
    1,
    rejected(RejectReason::BalanceOverflow),
    Some(7),
    Some(MAX)
)]
#[case::transfer_fills_destination(
    Some(MAX),
    Some(0),
    "transfer",
    MAX,
    applied(0),
    Some(0),
    Some(MAX)
)]
#[tokio::test]
async fn boundaries(
    #[case] a_before: Option<u64>,
    #[case] b_before: Option<u64>,
    #[case] kind: &str,
    #[case] amount: u64,
    #[case] expected: Outcome,
    #[case] a_after: Option<u64>,
    #[case] b_after: Option<u64>,
) {
    let store = store().await;
    if let Some(balance) = a_before {
        set(&store, "a", balance).await;
    }
    if let Some(balance) = b_before {
        set(&store, "b", balance).await;
    }
    let to = (kind == "transfer").then_some("b");
    let result = store
        .apply_batch(&[tx("t1", kind, to, amount)])
        .await
        .unwrap();
    assert_eq!(
        result,
        vec![Applied {
            outcome: expected,
            duplicate: false
        }]
    );
    assert_eq!(get(&store, "a").await, a_after, "balance of a");
    assert_eq!(get(&store, "b").await, b_after, "balance of b");
}

/// A repeated id, in the same batch or a later one, changes nothing and
/// answers the first outcome, even when the balance would now allow it.
#[tokio::test]
async fn duplicate_apply_returns_the_first_outcome_and_changes_nothing() {
    let store = store().await;
    set(&store, "a", 10).await;
    let debit = tx("dup", "debit", None, 4);
    let first = store
        .apply_batch(&[debit.clone(), debit.clone()])
        .await
        .unwrap();
    assert_eq!(
        first[0],
        Applied {
            outcome: applied(6),
            duplicate: false
        }
    );
    assert_eq!(
        first[1],
        Applied {
            outcome: applied(6),
            duplicate: true
        }
    );
    let again = store.apply_batch(&[debit]).await.unwrap();
    assert_eq!(
        again[0],
        Applied {
            outcome: applied(6),
            duplicate: true
        }
    );
    assert_eq!(get(&store, "a").await, Some(6));

    // A rejection is final too: funding the account later does not revive it.
    let too_big = tx("big", "debit", None, 100);
    assert_eq!(
        store
            .apply_batch(std::slice::from_ref(&too_big))
            .await
            .unwrap()[0]
            .outcome,
        rejected(RejectReason::InsufficientFunds)
    );
    set(&store, "a", 1000).await;
    let replay = store.apply_batch(&[too_big]).await.unwrap();
    assert_eq!(
        replay[0],
        Applied {
            outcome: rejected(RejectReason::InsufficientFunds),
            duplicate: true
        }
    );
    assert_eq!(get(&store, "a").await, Some(1000));
}

/// A record under an id that was applied with another body (a binding a
/// failover lost, then bound again) changes nothing and is never answered
/// the other body's outcome: it is a mismatch, for the consumer's DLQ.
#[tokio::test]
async fn another_body_under_an_applied_id_is_a_mismatch() {
    let store = store().await;
    set(&store, "a", 10).await;
    let first = tx("bound", "debit", None, 4);
    let other = tx("bound", "debit", None, 5);
    let record = |tx: &Transaction| txengine::wire::Record {
        tx: tx.clone(),
        accepted_at_ms: 0,
        saga: None,
    };
    let progress = store
        .apply_records(&[record(&first), record(&other), record(&first)])
        .await
        .unwrap();
    assert_eq!(progress[1], Progress::Mismatch);
    assert!(
        matches!(&progress[2], Progress::Ended { applied, .. } if applied.duplicate),
        "{progress:?}"
    );
    assert_eq!(get(&store, "a").await, Some(6));
    assert!(store.apply_batch(&[other]).await.is_err());
}

/// A slot's records run in one call, in order: with Redis's scripts lost
/// (a restart or failover), the store loads them and runs the call again,
/// and a hold then a debit on one account still apply as the hold, then
/// the debit refused for the money it keeps; never the debit, then the
/// hold refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_whose_scripts_were_lost_applies_in_order() {
    crate::infra();
    let redis = harness::infra::LocalRedis::start("always").unwrap();
    let store = store_at(&redis.url(), "in-order").await;
    set(&store, "a", 100).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let hold = Transaction {
        asset: None,
        metadata: Default::default(),
        id: TxId::parse("hold-all").unwrap(),
        movement: Movement::Hold {
            account: account("a"),
            to: None,
            amount: Amount::new(100).unwrap(),
            timeout_s: 60,
        },
    };
    let debit = tx("debit-half", "debit", None, 50);
    let record = |tx: Transaction| txengine::wire::Record {
        tx,
        accepted_at_ms: 0,
        saga: None,
    };
    let progress = store
        .apply_records(&[record(hold), record(debit)])
        .await
        .unwrap();
    let outcomes: Vec<Outcome> = progress
        .iter()
        .map(|p| match p {
            Progress::Ended { applied, .. } => applied.outcome,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        outcomes,
        [applied(100), rejected(RejectReason::InsufficientFunds)]
    );
    assert_eq!(get(&store, "a").await, Some(100));
}

/// A slot's records in one call each write their own history entries, and
/// the store counts each entry once (apply_many.lua starts every record's
/// count at 0): three debits and a credit of account `a`, four entries.
#[tokio::test]
async fn one_call_of_a_slot_counts_each_history_entry_once() {
    let store = store().await;
    set(&store, "a", 100).await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let batch = [
        tx("counted-1", "debit", None, 1),
        tx("counted-2", "debit", None, 2),
        tx("counted-3", "credit", None, 3),
        tx("counted-4", "debit", None, 4),
    ];
    let applied = store.apply_batch(&batch).await.unwrap();
    assert_eq!(applied.last().unwrap().outcome, self::applied(96));
    let entries = metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("txengine_history_entries_total "))
        .map(str::to_owned);
    assert_eq!(entries.as_deref(), Some("4"));
}

/// More records of one slot than one script call takes apply in several
/// calls of one pipeline, in order, in one round (four calls: each but the
/// last records its place for the next): 450 debits of 1 from a balance of
/// 400, the first 400 applied, the last 50 refused.
#[tokio::test]
async fn a_slot_of_more_records_than_one_call_takes_applies_in_order() {
    let store = store().await;
    set(&store, "a", 400).await;
    let batch: Vec<Transaction> = (0..450)
        .map(|i| tx(&format!("many-{i}"), "debit", None, 1))
        .collect();
    let outcomes: Vec<Outcome> = store
        .apply_batch(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|applied| applied.outcome)
        .collect();
    let expected: Vec<Outcome> = (0..450)
        .map(|i| match i < 400 {
            true => applied(399 - i),
            false => rejected(RejectReason::InsufficientFunds),
        })
        .collect();
    assert_eq!(outcomes, expected);
    assert_eq!(get(&store, "a").await, Some(0));
}

/// A slot's script calls go in one pipeline, and each runs only after the
/// one before it ran to the end: a record that fails with an error stops
/// its call, and the call after it in the pipeline is skipped, not applied
/// ahead of what did not run. 150 records of account `a` (calls of 100 and
/// 50): 50 debits of 1, a saga's release with nothing in flight (an error),
/// then 99 more debits: only the first 50 apply.
#[tokio::test]
async fn a_call_after_one_that_failed_is_skipped() {
    let store = store().await;
    set(&store, "a", 1_000).await;
    set(&store, "b", 0).await;
    let record = |tx| txengine::wire::Record {
        tx,
        accepted_at_ms: 0,
        saga: None,
    };
    let mut records: Vec<txengine::wire::Record> = (0..50)
        .map(|i| record(tx(&format!("before-{i}"), "debit", None, 1)))
        .collect();
    records.push(txengine::wire::Record {
        saga: Some(txengine::wire::SagaStep::Settle {
            debited_balance_after: Balance::new(0).unwrap(),
            refused: None,
        }),
        ..record(tx("nothing-held", "transfer", Some("b"), 5))
    });
    records.extend((0..99).map(|i| record(tx(&format!("after-{i}"), "debit", None, 1))));
    let error = store.apply_records(&records).await.unwrap_err();
    assert!(error.to_string().contains("held"), "{error}");
    assert_eq!(get(&store, "a").await, Some(950));
}

/// Each record of a call sees only its own KEYS (apply_many.lua refills the
/// table, clearing the record before's): a capture saga's release (five
/// keys, the fifth its capturing hold) then a transfer saga's release (four
/// keys) of the same account, in one call. Were the hold left behind as the
/// second's KEYS[5], it would find it captured and refuse.
#[tokio::test]
async fn each_record_of_a_call_sees_only_its_own_keys() {
    let store = store().await;
    set(&store, "a", 100).await;
    let layout = store.layout();
    let (account, hold) = (layout.account("a"), layout.hold("a", "h-1"));
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Money in flight from both sagas' debits, and the capture's hold.
    let _: () = redis::cmd("HSET")
        .arg(&account)
        .arg("held")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&hold)
        .arg("state")
        .arg("capturing")
        .query_async(&mut conn)
        .await
        .unwrap();
    let keys_of = |id: &str| {
        vec![
            layout.step("a", id, "settle"),
            layout.seq(0),
            account.clone(),
            layout.history("a"),
        ]
    };
    let mut capture_keys = keys_of("cap-1");
    capture_keys.push(hold.clone());
    let transfer_keys = keys_of("tr-1");
    // saga_step.lua's ARGV: the step, amount, fingerprint, TTL, clock, id,
    // history to keep, metadata, counterparty, kind, hold id, asset.
    let args = |id: &str, kind: &str, hold_id: &str| {
        [
            "release", "5", id, "60", "1", id, "0", "", "b", kind, hold_id, "",
        ]
        .map(String::from)
    };
    let _: redis::Value = redis::cmd("EVAL")
        .arg(Store::script_source("apply_many").unwrap())
        .arg(1 + capture_keys.len() + transfer_keys.len())
        .arg(layout.order(0, "own-keys"))
        .arg(&capture_keys)
        .arg(&transfer_keys)
        .arg(-1)
        .arg(2)
        .arg("saga_step")
        .arg(capture_keys.len())
        .arg(12)
        .arg(&args("cap-1", "capture", "h-1"))
        .arg("saga_step")
        .arg(transfer_keys.len())
        .arg(12)
        .arg(&args("tr-1", "transfer", ""))
        .query_async(&mut conn)
        .await
        .expect("both releases run");
    let (held, state): (String, String) = redis::pipe()
        .cmd("HGET")
        .arg(&account)
        .arg("held")
        .cmd("HGET")
        .arg(&hold)
        .arg("state")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((held.as_str(), state.as_str()), ("0", "captured"));
}

/// A Redis killed with -9 and restarted on its AOF keeps every applied
/// balance and outcome, and has lost its script cache: the store reloads the
/// scripts on NOSCRIPT and later batches still apply exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn redis_restart_keeps_outcomes_and_reloads_scripts() {
    crate::infra();
    // Its own Redis: a restart of the shared one would disturb other tests.
    let mut redis = harness::infra::LocalRedis::start("always").unwrap();
    let store = store_at(&redis.url(), "restart").await;
    set(&store, "a", 10).await;
    let before = tx("before-restart", "debit", None, 3);
    assert_eq!(
        store
            .apply_batch(std::slice::from_ref(&before))
            .await
            .unwrap()[0]
            .outcome,
        applied(7)
    );

    tokio::task::block_in_place(|| redis.restart()).unwrap();

    // The first call may meet the dropped connection, as the consumer would;
    // like the consumer, retry the whole batch.
    let batch = [before, tx("after-restart", "debit", None, 2)];
    let mut replayed = store.apply_batch(&batch).await;
    for _ in 0..20 {
        if replayed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        replayed = store.apply_batch(&batch).await;
    }
    let replayed = replayed.unwrap();
    assert_eq!(
        replayed[0],
        Applied {
            outcome: applied(7),
            duplicate: true
        }
    );
    assert_eq!(
        replayed[1],
        Applied {
            outcome: applied(5),
            duplicate: false
        }
    );
    assert_eq!(get(&store, "a").await, Some(5));
}

/// The claim binds an id to its first body for the outcome TTL and leases it
/// to one request: while the lease lasts the same body is in flight; another
/// body is a conflict for good (also once the lease ended, since that
/// publish may still land); the lease is released or accepted only by its
/// own request; once accepted, the record stays for the outcome TTL.
#[tokio::test]
async fn claim_binds_the_id_and_leases_it() {
    let store = store_with_lease(300).await;
    let first = tx("lease", "debit", None, 5);
    let other = tx("lease", "credit", None, 5);
    let claim = |tx, token: &str| {
        let (store, token) = (&store, token.to_owned());
        async move { store.claim(tx, &token).await.unwrap() }
    };
    let fresh = Store::lease_token;
    let first_token = fresh();
    assert_eq!(claim(&first, &first_token).await, Claim::Claimed);
    assert_eq!(claim(&first, &fresh()).await, Claim::InFlight);
    assert_eq!(claim(&other, &fresh()).await, Claim::Conflict);

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        claim(&other, &fresh()).await,
        Claim::Conflict,
        "the binding outlives the lease"
    );
    let second_token = fresh();
    assert_eq!(claim(&first, &second_token).await, Claim::Claimed);
    // The first request's publish returns late: its lease is gone.
    assert_eq!(
        store.accept(&first, &first_token).await.unwrap(),
        Acceptance::NotOwner
    );
    assert!(!store.release(&first.id, &first_token).await.unwrap());
    assert_eq!(
        claim(&first, &fresh()).await,
        Claim::InFlight,
        "the second request still holds the lease"
    );
    assert!(store.release(&first.id, &second_token).await.unwrap());
    let third_token = fresh();
    assert_eq!(
        claim(&first, &third_token).await,
        Claim::Claimed,
        "a released lease is free at once"
    );
    assert_eq!(
        store.accept(&first, &third_token).await.unwrap(),
        Acceptance::Accepted
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        claim(&first, &fresh()).await,
        Claim::Known(TxStatus::Pending)
    );
    assert_eq!(claim(&other, &fresh()).await, Claim::Conflict);
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(store.tx_key(&first.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((3000..=3600).contains(&ttl), "record TTL {ttl} s");

    // A record gone during a publish (expired) and claimed by another body:
    // the late accept changes nothing and says so.
    let bound = tx("rebound", "debit", None, 5);
    let rival = tx("rebound", "credit", None, 5);
    let bound_token = fresh();
    assert_eq!(claim(&bound, &bound_token).await, Claim::Claimed);
    let _: () = redis::cmd("DEL")
        .arg(store.tx_key(&bound.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(claim(&rival, &fresh()).await, Claim::Claimed);
    assert_eq!(
        store.accept(&bound, &bound_token).await.unwrap(),
        Acceptance::Conflict
    );
}

/// Runs apply script `script` with EVAL as the store runs it (a function
/// of lua/apply_many.lua, the first call of a pipeline, under the order key
/// `order`), doing `what` with `keys` (the account's at KEYS[3..4],
/// lua/money.lua's layout), then a debit of 10 from that account in the
/// same call, and answers the error it must refuse with. The refusal stops
/// the call: the debit after it must not run, nor the order key be written.
async fn refused_eval(
    conn: &mut redis::aio::MultiplexedConnection,
    order: &str,
    script: &str,
    keys: &[String],
    what: &str,
) -> redis::RedisError {
    let debit_keys = [
        format!("{}-after", keys[0]),
        keys[1].clone(),
        keys[2].clone(),
        keys[3].clone(),
    ];
    let refused_args = [what, "10", "fp", "60", "1"];
    let debit_args = [
        "debit", "10", "fp-after", "60", "1", "after", "0", "", "", "a", "",
    ];
    redis::cmd("EVAL")
        .arg(Store::script_source("apply_many").unwrap())
        .arg(1 + keys.len() + debit_keys.len())
        .arg(order)
        .arg(keys)
        .arg(&debit_keys)
        .arg(1)
        .arg(2)
        .arg(script)
        .arg(keys.len())
        .arg(refused_args.len())
        .arg(&refused_args)
        .arg("atomic_update")
        .arg(debit_keys.len())
        .arg(debit_args.len())
        .arg(&debit_args)
        .query_async::<redis::Value>(conn)
        .await
        .unwrap_err()
}

/// An unknown kind (apply script) or saga step, or an apply script
/// apply_many.lua does not have, is refused before anything is written: no
/// flag, no order number, no balance or hold changed, never taken for a
/// debit or a settle, and nothing after it in the call runs. Called with
/// EVAL straight from the files, as nothing in Rust can build such a call.
#[tokio::test]
async fn unknown_kinds_and_saga_steps_write_nothing() {
    let store = store().await;
    set(&store, "a", 100).await;
    let layout = store.layout();
    let account = layout.account("a");
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&account)
        .arg("held")
        .arg(50)
        .query_async(&mut conn)
        .await
        .unwrap();
    let order = layout.order(0, "unknown-kinds");
    // KEYS[1..4], the account's keys as every apply script takes them
    // (lua/money.lua's layout).
    let keys = [
        layout.tx("bogus"),
        layout.seq(0),
        account.clone(),
        layout.history("a"),
    ];
    for (script, kind, refusal) in [
        ("atomic_update", "refund", "kind refund"),
        ("saga_step", "steal", "steal"),
        ("hold", "steal", "steal"),
        ("refund_all", "debit", "apply script refund_all"),
    ] {
        let error = refused_eval(&mut conn, &order, script, &keys, kind).await;
        assert!(error.to_string().contains(refusal), "{script}: {error}");
        let record: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&account)
            .arg("balance")
            .arg("held")
            .query_async(&mut conn)
            .await
            .unwrap();
        let seq: Option<String> = redis::cmd("GET")
            .arg(layout.seq(0))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            (record, seq),
            (vec![Some("100".to_owned()), Some("50".to_owned())], None),
            "{script} wrote before it refused {kind}"
        );
        let flag: bool = redis::cmd("EXISTS")
            .arg(layout.tx("bogus"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!flag, "{script} set the flag");
        let ran: bool = redis::cmd("EXISTS")
            .arg(&order)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!ran, "{script}'s refusal counted as run");
    }
}

/// A transfer, or a hold's capture, whose destination record is the
/// account's own is refused by the script before any write (it would write
/// the record twice, the second undoing the first). Called with EVAL, as
/// the API and the wire decoder refuse such a movement first.
#[tokio::test]
async fn money_to_its_own_account_is_refused_by_the_script() {
    let store = store().await;
    set(&store, "self", 100).await;
    let layout = store.layout();
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (account, history) = (layout.account("self"), layout.history("self"));
    let flag = layout.tx("to-self");
    let calls = [
        (
            "atomic_update",
            "transfer",
            vec![
                flag.clone(),
                layout.seq(0),
                account.clone(),
                history.clone(),
                account.clone(),
                history.clone(),
            ],
        ),
        (
            "hold",
            "capture",
            vec![
                flag.clone(),
                layout.seq(0),
                account.clone(),
                history.clone(),
                layout.hold("self", "h"),
                layout.holds_due(0),
                account.clone(),
                history.clone(),
            ],
        ),
    ];
    for (script, what, keys) in calls {
        let order = layout.order(0, "own-account");
        let error = refused_eval(&mut conn, &order, script, &keys, what).await;
        assert!(
            error.to_string().contains("its own account"),
            "{script}: {error}"
        );
        assert_eq!(get(&store, "self").await, Some(100), "{script} moved money");
        let flag_set: bool = redis::cmd("EXISTS")
            .arg(&flag)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!flag_set, "{script} wrote its flag");
    }
}
