//! Differential test: the real apply script in the real Redis and the plain
//! model of `harness::model`, fed the same random sequences (with repeated
//! ids, missing accounts, 0, 1 and 2^53-1, accounts of two assets with
//! overdrafts and caps): same outcome, same reason, same
//! `balance_after`, same failed posting, same duplicate flag, same final
//! balances (postings of up to three legs among them); a repeated id
//! with another body is a mismatch that changes nothing. proptest
//! shrinks a failure to a small sequence.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use harness::workload::{AccountSpec, Kind, Leg, SentTx, ASSETS};
use proptest::prelude::*;
use txengine::domain::{AccountChange, AccountId, Asset, Balance, Outcome, Transaction};
use txengine::limits::MAX_MINOR_UNITS;
use txengine::store::{Progress, Store, StoreSettings};
use txengine::wire::Record;

const MAX: u64 = MAX_MINOR_UNITS;
/// Accounts a0..a2 may exist; `ghost` never does.
const ACCOUNTS: [&str; 4] = ["a0", "a1", "a2", "ghost"];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
}

fn edge_value() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(1), Just(MAX - 1), Just(MAX), 0u64..2_000]
}

/// An account's asset and bounds: either asset, an overdraft or none, a
/// cap or none.
fn spec() -> impl Strategy<Value = AccountSpec> {
    let max = MAX as i64;
    (
        0usize..2,
        prop_oneof![Just(0), Just(-1), Just(-1000), Just(-max)],
        prop_oneof![Just(max), Just(1000), Just(2000)],
    )
        .prop_map(|(asset, min_balance, max_balance)| AccountSpec {
            asset: ASSETS[asset].to_owned(),
            min_balance,
            max_balance,
        })
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1), Just(MAX), 1u64..2_000]
}

/// A posting between two different accounts (`ghost` included), naming
/// one of the two assets or none.
fn leg() -> impl Strategy<Value = Leg> {
    (0usize..4, 1usize..4, amount(), 0usize..4).prop_map(|(from, step, amount, asset)| Leg {
        from: ACCOUNTS[from].to_owned(),
        to: ACCOUNTS[(from + step) % 4].to_owned(),
        amount,
        asset: ASSETS.get(asset).map(|asset| asset.to_string()),
    })
}

fn transaction() -> impl Strategy<Value = SentTx> {
    // A small id pool makes repeats (duplicates) common.
    (
        0usize..12,
        0usize..4,
        0usize..4,
        0usize..4,
        amount(),
        proptest::collection::vec(leg(), 1..4),
    )
        .prop_map(|(id, kind, from, to, amount, legs)| {
            let kind = [Kind::Debit, Kind::Credit, Kind::Transfer, Kind::Postings][kind];
            if kind == Kind::Postings {
                return SentTx {
                    id: format!("t{id}"),
                    kind,
                    account: legs[0].from.clone(),
                    to: None,
                    amount: legs.iter().map(|leg| leg.amount).sum(),
                    accepted_at_ms: 0,
                    hold: None,
                    legs,
                };
            }
            // A transfer goes to another account (the API refuses self-transfers).
            let to = (kind == Kind::Transfer)
                .then(|| ACCOUNTS[if to == from { (to + 1) % 4 } else { to }].to_owned());
            SentTx {
                id: format!("t{id}"),
                kind,
                account: ACCOUNTS[from].to_owned(),
                to,
                amount,
                accepted_at_ms: 0,
                hold: None,
                legs: Vec::new(),
            }
        })
}

fn domain(tx: &SentTx) -> Transaction {
    tx.transaction().expect("a valid transaction")
}

/// The failed posting an outcome names.
fn failed_posting(outcome: Outcome) -> Option<u16> {
    match outcome {
        Outcome::Rejected { posting, .. } => posting,
        Outcome::Applied { .. } => None,
    }
}

fn as_model(outcome: Outcome) -> Result<i64, &'static str> {
    match outcome {
        Outcome::Applied { balance_after } => Ok(balance_after.minor_units()),
        Outcome::Rejected { reason, .. } => Err(reason.as_str()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn the_apply_script_agrees_with_the_model(
        start in proptest::collection::vec(proptest::option::of((edge_value(), spec())), 3),
        txs in proptest::collection::vec(transaction(), 1..30),
        batch_size in 1usize..8,
    ) {
        let redis_url = crate::infra().redis_url.clone();
        runtime().block_on(async {
            let store = Store::connect(StoreSettings {
                topology: txengine::config::RedisTopology::Single,
                url: &redis_url,
                namespace: &format!("diff-{}", uuid::Uuid::new_v4().simple()),
                outcome_ttl_secs: 600,
                history_keep_secs: 600,
                lease_ms: 30_000,
                response_timeout: Duration::from_secs(5),
                default_asset: Default::default(),
            })
            .await
            .unwrap();
            let mut books = harness::model::Books::default();
            for (name, opened) in ACCOUNTS.iter().zip(&start) {
                if let Some((balance, spec)) = opened {
                    let account = AccountId::parse(name).unwrap();
                    let bound = |n: i64| Some(Balance::new(n).unwrap());
                    let change = AccountChange {
                        asset: Some(Asset::parse(&spec.asset).unwrap()),
                        min_balance: bound(spec.min_balance),
                        max_balance: bound(spec.max_balance),
                        metadata: None,
                    };
                    store.put_account(&account, &change).await.unwrap().unwrap();
                    let balance = (*balance as i64).min(spec.max_balance);
                    store.set_balance(&account, Balance::new(balance).unwrap()).await.unwrap().ensure_set().unwrap();
                    books.balances.insert(name.to_string(), balance);
                    books.specs.insert(name.to_string(), spec.clone());
                }
            }
            // Each id's first body (its fingerprint) and outcome: a repeat
            // of that body answers the outcome again, another body under the
            // id is a mismatch that changes nothing.
            type Decided = (Result<i64, &'static str>, Option<u16>);
            let mut first: HashMap<String, (String, Decided)> = HashMap::new();
            for chunk in txs.chunks(batch_size) {
                let records: Vec<Record> = chunk
                    .iter()
                    .map(|tx| Record { tx: domain(tx), accepted_at_ms: 0, saga: None })
                    .collect();
                let progress = store.apply_records(&records).await.unwrap();
                for ((tx, record), got) in chunk.iter().zip(&records).zip(progress) {
                    let fingerprint = record.tx.fingerprint();
                    let expected = match first.get(&tx.id) {
                        Some((bound, outcome)) if *bound == fingerprint => Some((*outcome, true)),
                        Some(_) => None,
                        None => {
                            let outcome = harness::model::decide(&mut books, tx);
                            let decided = (outcome, books.failed_posting);
                            first.insert(tx.id.clone(), (fingerprint, decided));
                            Some((decided, false))
                        }
                    };
                    match (expected, got) {
                        (None, Progress::Mismatch) => {}
                        (Some(((outcome, posting), duplicate)), Progress::Ended { applied, .. }) => {
                            prop_assert_eq!(as_model(applied.outcome), outcome, "{:?}", tx);
                            prop_assert_eq!(failed_posting(applied.outcome), posting, "{:?}", tx);
                            prop_assert_eq!(applied.duplicate, duplicate, "{:?}", tx);
                        }
                        (expected, got) => prop_assert!(false, "{:?}: expected {:?}, got {:?}", tx, expected, got),
                    }
                }
            }
            for name in ACCOUNTS {
                let stored = store.balance(&AccountId::parse(name).unwrap()).await.unwrap().map(Balance::minor_units);
                prop_assert_eq!(stored, books.balances.get(name).copied(), "final balance of {}", name);
            }
            Ok(())
        })?;
    }
}
