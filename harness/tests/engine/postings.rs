//! Postings over real HTTP with the real Redis and Kafka behind: several
//! movements of one transaction applied in order, all or none, checked
//! against the balances the postings before them left, on one Redis and on
//! a Redis Cluster when every account shares a slot.

use std::collections::HashMap;
use std::time::Duration;

use harness::stack::{isolated_config, Stack};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use txengine::limits::MAX_POSTINGS;
use txengine::store::{Layout, RedisTopology};

const SETTLE: Duration = Duration::from_secs(30);

async fn stack(topology: RedisTopology, name: &str) -> Stack {
    Stack::start_with(isolated_config(crate::infra_of(topology), name))
        .await
        .expect("engine starts")
}

/// Where the accounts of a test live on a Redis Cluster.
#[derive(Debug, Clone, Copy)]
enum Slots {
    /// All in one slot: each postings transaction is one script call.
    One,
    /// Each in a slot of its own: every postings transaction commits in
    /// two phases (on one Redis, every name shares the one slot).
    Apart,
}

/// `count` account names, each starting with `prefix`, in `slots` on `s`'s
/// topology.
fn names(
    s: &Stack,
    topology: RedisTopology,
    slots: Slots,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let layout = Layout::new(&s.config.namespace, topology);
    let first = format!("{prefix}-0");
    let mut names = vec![first.clone()];
    let mut n = 1;
    while names.len() < count {
        let name = format!("{prefix}-{n}");
        let fits = match slots {
            Slots::One => layout.same_slot(&first, &name),
            Slots::Apart => names.iter().all(|other| !layout.same_slot(other, &name)),
        };
        if fits {
            names.push(name);
        }
        n += 1;
    }
    names
}

/// Makes `account` of `asset` with `bounds` and sets its balance.
async fn open(s: &Stack, account: &str, asset: &str, bounds: Value, balance: i64) {
    let mut body = bounds;
    body["asset"] = json!(asset);
    let (status, answer) = s.put_account(account, &body).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{account}: {answer}");
    let (status, answer) = s.put_balance_raw(account, balance).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{account}: {answer}");
}

/// Each account's balance.
async fn balances(s: &Stack, accounts: &[&str]) -> Vec<i64> {
    let mut found = Vec::new();
    for account in accounts {
        found.push(
            s.balance(account)
                .await
                .unwrap()
                .expect("the account exists"),
        );
    }
    found
}

fn leg(from: &str, to: &str, amount: i64) -> Value {
    json!({"from": from, "to": to, "amount": amount})
}

/// Posts each postings transaction (accepted) and waits for their views.
async fn settle(s: &Stack, txs: &[(&str, Vec<Value>)]) -> HashMap<String, Value> {
    for (id, postings) in txs {
        let body = json!({"id": id, "type": "postings", "postings": postings});
        let (status, answer) = s.post(&body).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{id}: {answer}");
    }
    let ids: Vec<String> = txs.iter().map(|(id, _)| (*id).to_owned()).collect();
    s.wait_settled(&ids, SETTLE).await.unwrap()
}

/// A page of `account`'s history, newest first.
async fn history(s: &Stack, account: &str) -> Vec<Value> {
    let (status, page) = s
        .get(&format!("/accounts/{account}/transactions?limit=100"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    page["entries"].as_array().unwrap().clone()
}

/// Postings move money in order, each checked against what the postings
/// before it left; the first that fails moves nothing of any, and is named;
/// each applied posting is an entry on both its accounts, a refusal one on
/// the failed posting's `from`; the entries replay to the balances.
#[rstest]
#[case::one_redis(RedisTopology::Single, Slots::One)]
#[case::cluster_one_slot(RedisTopology::Cluster, Slots::One)]
#[case::cluster_slots_apart(RedisTopology::Cluster, Slots::Apart)]
#[tokio::test(flavor = "multi_thread")]
async fn postings_move_all_or_nothing_in_order(
    #[case] topology: RedisTopology,
    #[case] slots: Slots,
) {
    let s = stack(topology, "postings").await;
    let names = names(&s, topology, slots, "p", 8);
    let [alice, bob, carol, euro, house_usd, house_eur, alice_eur, nobody] =
        names.iter().map(String::as_str).collect::<Vec<_>>()[..]
    else {
        unreachable!()
    };
    open(&s, alice, "USD/2", json!({}), 1000).await;
    open(&s, bob, "USD/2", json!({"max_balance": 500}), 0).await;
    open(&s, carol, "USD/2", json!({}), 0).await;
    open(&s, euro, "EUR/2", json!({}), 1000).await;
    open(&s, house_usd, "USD/2", json!({}), 0).await;
    open(
        &s,
        house_eur,
        "EUR/2",
        json!({"min_balance": -1_000_000}),
        0,
    )
    .await;
    open(&s, alice_eur, "EUR/2", json!({}), 0).await;
    let all = [alice, bob, carol, euro, house_usd, house_eur, alice_eur];

    // Bob pays Carol 250 of the 300 the first posting gave him.
    let views = settle(
        &s,
        &[(
            "split",
            vec![
                leg(alice, bob, 300),
                leg(bob, carol, 250),
                leg(alice, carol, 100),
            ],
        )],
    )
    .await;
    assert_eq!(
        (
            &views["split"]["status"],
            &views["split"]["balance_after"],
            &views["split"]["asset"]
        ),
        (&json!("applied"), &json!(600), &json!("USD/2")),
        "{:?}",
        views["split"]
    );
    // The postings as posted, each naming the asset its money was of.
    let assets_of = |view: &Value| -> Vec<Value> {
        view["postings"]
            .as_array()
            .expect("the postings")
            .iter()
            .map(|posting| posting.get("asset").cloned().unwrap_or(Value::Null))
            .collect()
    };
    assert_eq!(assets_of(&views["split"]), vec![json!("USD/2"); 3]);
    // Its kind; its accounts and amounts are its postings', none beside them.
    assert_eq!(views["split"]["type"], "postings");
    for field in ["account", "to", "amount", "hold"] {
        assert!(
            views["split"].get(field).is_none(),
            "{field}: {:?}",
            views["split"]
        );
    }
    assert_eq!(balances(&s, &all).await, [600, 50, 350, 1000, 0, 0, 0]);

    // Each refusal names the first posting that failed and moves nothing.
    let mut named_eur = leg(alice, bob, 1);
    named_eur["asset"] = json!("EUR/2");
    let refusals = [
        (
            "over-cap",
            vec![leg(alice, carol, 200), leg(carol, bob, 451)],
            "max_balance_exceeded",
            1,
        ),
        ("short", vec![leg(bob, alice, 51)], "insufficient_funds", 0),
        // Bob would have 50 + 10: not the 61 the second posting takes.
        (
            "short-later",
            vec![leg(alice, bob, 10), leg(bob, carol, 61)],
            "insufficient_funds",
            1,
        ),
        (
            "across-assets",
            vec![leg(alice, euro, 1)],
            "asset_mismatch",
            0,
        ),
        (
            "named-other",
            vec![leg(carol, alice, 1), named_eur],
            "asset_mismatch",
            1,
        ),
        (
            "nobody",
            vec![leg(alice, carol, 1), leg(carol, nobody, 1)],
            "unknown_account",
            1,
        ),
        (
            "no-source",
            vec![leg(nobody, carol, 1)],
            "unknown_account",
            0,
        ),
        // Carol has 350: after paying 200, not 200 more.
        (
            "twice",
            vec![leg(carol, alice, 200), leg(carol, bob, 200)],
            "insufficient_funds",
            1,
        ),
    ];
    let txs: Vec<(&str, Vec<Value>)> = refusals
        .iter()
        .map(|(id, postings, _, _)| (*id, postings.clone()))
        .collect();
    let views = settle(&s, &txs).await;
    for (id, _, reason, index) in &refusals {
        let view = &views[*id];
        assert_eq!(
            (&view["status"], &view["reason"], &view["posting"]),
            (&json!("rejected"), &json!(reason), &json!(index)),
            "{id}: {view}"
        );
        assert!(view.get("balance_after").is_none(), "{id}: {view}");
    }
    assert_eq!(
        balances(&s, &all).await,
        [600, 50, 350, 1000, 0, 0, 0],
        "no refused posting moved anything"
    );
    // A refusal names each posting's asset too: its `from`'s, none where
    // that account does not exist.
    assert_eq!(assets_of(&views["across-assets"]), [json!("USD/2")]);
    assert_eq!(assets_of(&views["no-source"]), [Value::Null]);

    // Two assets in one transaction, through the house's accounts.
    let mut usd_leg = leg(alice, house_usd, 100);
    usd_leg["asset"] = json!("USD/2");
    let mut eur_leg = leg(house_eur, alice_eur, 90);
    eur_leg["asset"] = json!("EUR/2");
    let views = settle(&s, &[("exchange", vec![usd_leg, eur_leg])]).await;
    assert_eq!(
        views["exchange"]["status"], "applied",
        "{}",
        views["exchange"]
    );
    assert_eq!(
        assets_of(&views["exchange"]),
        [json!("USD/2"), json!("EUR/2")]
    );
    assert_eq!(balances(&s, &all).await, [500, 50, 350, 1000, 100, -90, 90]);

    // The same id and body again answers the outcome, posting included.
    let body = json!({"id": "over-cap", "type": "postings",
        "postings": [leg(alice, carol, 200), leg(carol, bob, 451)]});
    let (status, again) = s.post(&body).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["reason"], &again["posting"]),
        (&json!("max_balance_exceeded"), &json!(1))
    );

    // History: each applied posting on both sides, with its index; the
    // refusal once, on the failed posting's `from`, moving nothing.
    let carol_entries = history(&s, carol).await;
    let of = |entries: &[Value], id: &str| -> Vec<(i64, i64, String)> {
        let mut found: Vec<(i64, i64, String)> = entries
            .iter()
            .filter(|entry| entry["id"] == id)
            .map(|entry| {
                (
                    entry["posting"]
                        .as_i64()
                        .expect("a postings entry names its posting"),
                    entry["delta"].as_i64().unwrap(),
                    entry["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        found.reverse();
        found
    };
    assert_eq!(
        of(&carol_entries, "split"),
        [(1, 250, "applied".into()), (2, 100, "applied".into())]
    );
    assert_eq!(of(&carol_entries, "over-cap"), [(1, 0, "rejected".into())]);
    let alice_entries = history(&s, alice).await;
    assert_eq!(
        of(&alice_entries, "split"),
        [(0, -300, "applied".into()), (2, -100, "applied".into())]
    );
    assert!(
        of(&alice_entries, "over-cap").is_empty(),
        "only the failed posting's from"
    );
    let bob_entries = history(&s, bob).await;
    assert_eq!(
        of(&bob_entries, "split"),
        [(0, 300, "applied".into()), (1, -250, "applied".into())]
    );
    // Every account's entries replay to its balance, newest first.
    for account in all {
        let entries = history(&s, account).await;
        for pair in entries.windows(2) {
            let (newer, older) = (&pair[0], &pair[1]);
            assert_eq!(
                newer["balance_after"].as_i64().unwrap() - newer["delta"].as_i64().unwrap(),
                older["balance_after"].as_i64().unwrap(),
                "{account}: {newer} after {older}"
            );
        }
        assert_eq!(
            entries[0]["balance_after"].as_i64(),
            s.balance(account).await.unwrap(),
            "{account}"
        );
    }
    s.stop().await.unwrap();
}

/// What `POST /transactions` refuses of a postings transaction (422 with
/// the rule, or 403 when a `from` is out of the key's scope), and that
/// nothing of it is claimed: the id stays free.
#[tokio::test]
async fn a_bad_postings_request_is_refused_and_claims_nothing() {
    let s = stack(RedisTopology::Single, "postings-rules").await;
    let too_many: Vec<Value> = (0..=MAX_POSTINGS).map(|_| leg("a", "b", 1)).collect();
    let most: Vec<Value> = (0..MAX_POSTINGS).map(|_| leg("a", "b", 1)).collect();
    for (body, needle) in [
        (
            json!({"type": "postings", "postings": []}),
            "1..=16 postings",
        ),
        (
            json!({"type": "postings", "postings": too_many}),
            "1..=16 postings",
        ),
        (json!({"type": "postings"}), "`postings` is required"),
        (
            json!({"type": "postings", "postings": [leg("a", "b", 1), leg("c", "c", 1)]}),
            "postings[1]: a posting's `to` must differ",
        ),
        (
            json!({"type": "postings", "postings": [leg("a", "b", 1), leg("a", "b", 0)]}),
            "postings[1]: amount must be",
        ),
        (
            json!({"type": "postings", "postings": [{"from": "a b", "to": "b", "amount": 1}]}),
            "postings[0]: from must be",
        ),
        (
            json!({"type": "postings", "postings": [{"from": "a", "to": "b", "amount": 1, "asset": "usd"}]}),
            "postings[0]: asset must match",
        ),
        (
            json!({"type": "postings", "account": "a", "postings": [leg("a", "b", 1)]}),
            "`account` is not a field of a postings",
        ),
        (
            json!({"type": "postings", "asset": "USD/2", "postings": [leg("a", "b", 1)]}),
            "`asset` is not a field of a postings",
        ),
        (
            json!({"type": "postings", "amount": 1, "postings": [leg("a", "b", 1)]}),
            "`amount` is not a field of a postings",
        ),
        (
            json!({"account": "a", "amount": 1, "postings": [leg("a", "b", 1)]}),
            "`postings` is not a field of a debit",
        ),
    ] {
        let mut body = body;
        body["id"] = json!("refused");
        let (status, answer) = s.post(&body).await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        let detail = answer["detail"].as_str().unwrap_or("");
        assert!(detail.contains(needle), "`{needle}` not in {detail:?}");
    }
    // An unknown field of a posting is the body's shape: 400.
    let (status, _) = s
        .post(&json!({"type": "postings", "postings": [{"from": "a", "to": "b", "amount": 1, "fee": 1}]}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Every `from` must be in the key's scope; any `to` may be paid.
    let scoped = s.create_key(&["a", "c"], None, None).await.unwrap();
    let scoped = s.with_api_key(&scoped.secret).unwrap();
    let body = json!({"id": "refused", "type": "postings",
        "postings": [leg("a", "b", 1), leg("b", "c", 1)]});
    let (status, answer) = scoped.post(&body).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("account b"),
        "{answer}"
    );
    let (status, _) = s.get("/transactions/refused").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was claimed");

    // The most postings a transaction may have are taken, in a batch too.
    s.set_balance("a", 100).await.unwrap();
    s.set_balance("b", 0).await.unwrap();
    let (status, answer) = s
        .post_batch(&[
            json!({"id": "most", "type": "postings", "postings": most}),
            json!({"id": "in-scope", "type": "postings", "postings": [leg("a", "b", 1)]}),
        ])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    let views = s
        .wait_settled(&["most".into(), "in-scope".into()], SETTLE)
        .await
        .unwrap();
    assert_eq!(views["most"]["balance_after"], 100 - MAX_POSTINGS as i64);
    assert_eq!(views["in-scope"]["status"], "applied");
    assert_eq!(s.balance("b").await.unwrap(), Some(MAX_POSTINGS as i64 + 1));

    // A key that sees another `from` than the first sees the outcome but
    // not the first `from`'s balance; one that sees only a `to`, nothing.
    s.set_balance("c", 5).await.unwrap();
    let (status, answer) = scoped
        .post(&json!({"id": "two-froms", "type": "postings",
            "postings": [leg("a", "b", 500), leg("c", "b", 1)]}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    s.wait_settled(&["two-froms".into()], SETTLE).await.unwrap();
    let c_only = s.create_key(&["c"], None, None).await.unwrap();
    let c_only = s.with_api_key(&c_only.secret).unwrap();
    let (status, seen) = c_only.get("/transactions/two-froms").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(
        (&seen["status"], &seen["reason"], &seen["posting"]),
        (&json!("rejected"), &json!("insufficient_funds"), &json!(0))
    );
    assert!(
        seen.get("postings").is_none() && seen.get("asset").is_none(),
        "{seen}"
    );
    let b_only = s.create_key(&["b"], None, None).await.unwrap();
    let b_only = s.with_api_key(&b_only.secret).unwrap();
    let (status, _) = b_only.get("/transactions/two-froms").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A key that sees the first `from` only sees each posting's asset only
    // where it sees the `from`; one that sees both, both.
    let default_asset = json!(s.config.default_asset.as_str());
    let a_only = s.create_key(&["a"], None, None).await.unwrap();
    let a_only = s.with_api_key(&a_only.secret).unwrap();
    for (key, expected) in [
        (&a_only, [default_asset.clone(), Value::Null]),
        (&scoped, [default_asset.clone(), default_asset.clone()]),
    ] {
        let (status, seen) = key.get("/transactions/two-froms").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{seen}");
        let assets: Vec<Value> = seen["postings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|posting| posting.get("asset").cloned().unwrap_or(Value::Null))
            .collect();
        assert_eq!(assets, expected, "{seen}");
    }
    // A batch that sends it again answers the failed posting too.
    let (status, answer) = scoped
        .post_batch(&[json!({"id": "two-froms", "type": "postings",
            "postings": [leg("a", "b", 500), leg("c", "b", 1)]})])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (
            &answer["results"][0]["status"],
            &answer["results"][0]["posting"]
        ),
        (&json!("rejected"), &json!(0)),
        "{answer}"
    );
    s.stop().await.unwrap();
}

/// A store of its own, with `balances` set.
async fn store_with(balances: &[(&str, i64)]) -> txengine::store::Store {
    use txengine::domain::{AccountId, Balance};
    let namespace = format!("postings-{}", uuid::Uuid::new_v4().simple());
    let store = crate::isolated_store(&namespace, &crate::infra().redis_url).await;
    for (account, balance) in balances {
        store
            .set_balance(
                &AccountId::parse(account).unwrap(),
                Balance::new(*balance).unwrap(),
            )
            .await
            .unwrap()
            .ensure_set()
            .unwrap();
    }
    store
}

fn postings_tx(id: &str, legs: &[(&str, &str, u64)]) -> txengine::domain::Transaction {
    use txengine::domain::{AccountId, Amount, Movement, Posting, Postings, Transaction, TxId};
    let legs = legs
        .iter()
        .map(|(from, to, amount)| {
            Posting::new(
                AccountId::parse(from).unwrap(),
                AccountId::parse(to).unwrap(),
                Amount::new(*amount).unwrap(),
                None,
            )
            .unwrap()
        })
        .collect();
    Transaction {
        id: TxId::parse(id).unwrap(),
        movement: Movement::Postings {
            postings: Postings::new(legs).unwrap(),
        },
        metadata: Default::default(),
        asset: None,
    }
}

/// A postings transaction applied again (a redelivery) answers its first
/// outcome, the failed posting included, and moves nothing more.
#[tokio::test]
async fn a_postings_transaction_applied_again_answers_its_first_outcome() {
    use txengine::domain::{Outcome, RejectReason};
    let store = store_with(&[("a", 10), ("b", 0), ("c", 0)]).await;
    let refused = postings_tx("refused", &[("a", "b", 5), ("b", "c", 6)]);
    let applied = postings_tx("applied", &[("a", "b", 5), ("b", "c", 5)]);
    let first = store
        .apply_batch(&[refused.clone(), applied.clone()])
        .await
        .unwrap();
    let again = store.apply_batch(&[refused, applied]).await.unwrap();
    let expected = [
        Outcome::Rejected {
            reason: RejectReason::InsufficientFunds,
            posting: Some(1),
        },
        Outcome::Applied {
            balance_after: txengine::domain::Balance::new(5).unwrap(),
        },
    ];
    for (answers, duplicate) in [(first, false), (again, true)] {
        let outcomes: Vec<Outcome> = answers.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, expected);
        assert!(
            answers.iter().all(|a| a.duplicate == duplicate),
            "{answers:?}"
        );
    }
    // Each posting's asset, answered again by each repeat.
    let default_asset = Some(txengine::domain::Asset::default());
    for _ in 0..2 {
        let records = [txengine::wire::Record {
            tx: postings_tx("refused", &[("a", "b", 5), ("b", "c", 6)]),
            accepted_at_ms: 0,
            saga: None,
        }];
        let progress = store.apply_records(&records).await.unwrap();
        match &progress[0] {
            txengine::store::Progress::Ended { posting_assets, .. } => {
                assert_eq!(posting_assets, &vec![default_asset.clone(); 2]);
            }
            other => panic!("{other:?}"),
        }
    }
    let mut found = Vec::new();
    for account in ["a", "b", "c"] {
        let id = txengine::domain::AccountId::parse(account).unwrap();
        found.push(store.balance(&id).await.unwrap().unwrap().minor_units());
    }
    assert_eq!(found, [5, 0, 5], "moved once");
}

/// The postings script refuses a call the store does not build (counts
/// that do not add up, a posting naming one account twice) before any
/// write; the same call built right applies.
#[tokio::test]
async fn the_postings_script_refuses_a_call_it_was_not_built_for() {
    let store = store_with(&[("a", 10), ("b", 0)]).await;
    let layout = store.layout();
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let flag = layout.tx("raw");
    let keys = |accounts: &[&str]| {
        let mut keys = vec![flag.clone(), layout.seq(0)];
        for account in accounts {
            keys.push(layout.account(account));
            keys.push(layout.history(account));
        }
        keys
    };
    let args = |names: &[&str], postings: &[(u32, u32)], extra: Option<&str>| {
        let mut args: Vec<String> = ["postings", "0", "fp", "60", "1", "raw", "3600000", ""]
            .map(String::from)
            .to_vec();
        args.push(names.len().to_string());
        args.extend(names.iter().map(|name| name.to_string()));
        args.push(postings.len().to_string());
        for (from, to) in postings {
            args.extend([from.to_string(), to.to_string(), "5".into(), String::new()]);
        }
        args.extend(extra.map(String::from));
        args
    };
    let eval = |keys: Vec<String>, args: Vec<String>| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(txengine::store::Store::script_source("apply_many").unwrap())
            .arg(1 + keys.len())
            .arg(layout.order(0, "raw"))
            .arg(&keys)
            .arg(-1)
            .arg(1)
            .arg("postings")
            .arg(keys.len())
            .arg(args.len())
            .arg(&args);
        cmd
    };
    for (keys, args, refusal) in [
        (
            keys(&["a", "b"]),
            args(&["a", "b"], &[(1, 1)], None),
            "posting 0 names accounts badly",
        ),
        (
            keys(&["a", "b"]),
            args(&["a", "b"], &[(1, 3)], None),
            "posting 0 names accounts badly",
        ),
        (
            keys(&["a", "b"]),
            args(&["a", "b"], &[(1, 2)], Some("x")),
            "malformed call",
        ),
        (
            keys(&["a"]),
            args(&["a", "b"], &[(1, 2)], None),
            "malformed call",
        ),
        (
            keys(&["a", "b"]),
            args(&["a", "b"], &[], None),
            "malformed call",
        ),
    ] {
        let answer: redis::RedisResult<redis::Value> =
            eval(keys, args.clone()).query_async(&mut conn).await;
        let error = answer.expect_err("refused");
        assert!(error.to_string().contains(refusal), "{args:?}: {error}");
        let flag_set: bool = redis::cmd("EXISTS")
            .arg(&flag)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!flag_set, "{args:?} wrote its flag");
        let a = txengine::domain::AccountId::parse("a").unwrap();
        assert_eq!(store.balance(&a).await.unwrap().unwrap().minor_units(), 10);
    }
    let answer: redis::Value = eval(keys(&["a", "b"]), args(&["a", "b"], &[(1, 2)], None))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(format!("{answer:?}").contains("applied"), "{answer:?}");
    let b = txengine::domain::AccountId::parse("b").unwrap();
    assert_eq!(store.balance(&b).await.unwrap().unwrap().minor_units(), 5);
}

/// Runs `cmd` on `account`'s record (its key the first argument) on the
/// shared cluster, as a foreign writer or a reader would.
async fn on_record<T: redis::FromRedisValue>(
    store: &txengine::store::Store,
    account: &str,
    cmd: &str,
    args: &[&str],
) -> T {
    let url = &crate::infra_of(RedisTopology::Cluster).redis_url;
    let conn = txengine::store::Connection::open(url, RedisTopology::Cluster, SETTLE)
        .await
        .unwrap();
    let layout = store.layout();
    let mut command = redis::cmd(cmd);
    command.arg(layout.account(account)).arg(args);
    let mut answers: Vec<T> = conn
        .run_by_slot(vec![(layout.shard_of(account), command)])
        .await
        .unwrap();
    answers.remove(0)
}

/// `fields` of `account`'s record on the shared cluster (absent: 0).
async fn account_fields(
    store: &txengine::store::Store,
    account: &str,
    fields: &[&str],
) -> Vec<i64> {
    let found: Vec<Option<i64>> = on_record(store, account, "HMGET", fields).await;
    found.into_iter().map(|field| field.unwrap_or(0)).collect()
}

/// While postings between slots keep room in `b` (max 50, 30 of it
/// reserved to come in), nothing else may take that room: a credit, the
/// admin setter, a lower cap. A commit runs only where its slot reserved,
/// and one whose reservation a foreign write took stops loudly.
async fn the_reservation_holds(
    store: &txengine::store::Store,
    a: &str,
    b: &str,
    c: &str,
    next: &txengine::wire::Record,
) {
    use txengine::domain::{
        AccountChange, AccountId, Amount, Balance, Kind, Movement, Outcome, RejectReason,
        Transaction, TxId,
    };
    use txengine::wire::{Record, SagaStep};
    let b_id = AccountId::parse(b).unwrap();
    let credit = Transaction {
        id: TxId::parse("into-b").unwrap(),
        movement: Movement::new(Kind::Credit, b_id.clone(), None, Amount::new(25).unwrap())
            .unwrap(),
        metadata: Default::default(),
        asset: None,
    };
    let applied = store.apply_batch(&[credit]).await.unwrap();
    assert_eq!(
        applied[0].outcome,
        Outcome::rejected(RejectReason::MaxBalanceExceeded),
        "0 + 30 coming in + 25 > 50"
    );
    let set = store
        .set_balance(&b_id, Balance::new(30).unwrap())
        .await
        .unwrap();
    assert!(set.ensure_set().is_err(), "30 + 30 coming in > 50");
    let lower = AccountChange {
        max_balance: Some(Balance::new(25).unwrap()),
        ..Default::default()
    };
    assert!(
        store.put_account(&b_id, &lower).await.unwrap().is_err(),
        "a cap of 25 below the 30 coming in"
    );
    let never_reserved = Record {
        tx: postings_tx("never", &[(a, b, 1)]),
        accepted_at_ms: 1,
        saga: Some(SagaStep::Commit {
            on: AccountId::parse(a).unwrap(),
            assets: vec![None],
        }),
    };
    assert!(store.apply_records(&[never_reserved]).await.is_err());
    // c's reservation taken by a foreign write: the commit stops, writes
    // nothing, and goes once the reservation is back.
    let _: i64 = on_record(store, c, "HSET", &["incoming", "0"]).await;
    assert!(store
        .apply_records(std::slice::from_ref(next))
        .await
        .is_err());
    assert_eq!(account_fields(store, c, &["balance"]).await, [0]);
    let _: i64 = on_record(store, c, "HSET", &["incoming", "15"]).await;
}

/// Postings between three slots, each step straight against the store and
/// applied twice as a redelivery would: every slot reserves (money out as
/// `pending`, room in as `incoming`, no balance moved), then each commits,
/// the last step in the first `from`'s slot; nothing moves twice and
/// nothing stays reserved.
#[tokio::test(flavor = "multi_thread")]
async fn postings_between_slots_reserve_then_commit_each_step_once() {
    use txengine::domain::{AccountId, Balance, Outcome};
    use txengine::store::{Applied, Progress};
    use txengine::wire::{Record, SagaStep};
    let namespace = format!("postings-{}", uuid::Uuid::new_v4().simple());
    let store = crate::isolated_store_on(crate::infra_of(RedisTopology::Cluster), &namespace).await;
    let layout = store.layout().clone();
    let mut apart: Vec<String> = Vec::new();
    for n in 0.. {
        let name = format!("s-{n}");
        if apart.iter().all(|other| !layout.same_slot(other, &name)) {
            apart.push(name);
        }
        if apart.len() == 3 {
            break;
        }
    }
    let [a, b, c] = [&apart[0], &apart[1], &apart[2]].map(String::as_str);
    let capped = txengine::domain::AccountChange {
        max_balance: Some(Balance::new(50).unwrap()),
        ..Default::default()
    };
    store
        .put_account(&AccountId::parse(b).unwrap(), &capped)
        .await
        .unwrap()
        .unwrap();
    for (account, balance) in [(a, 100), (b, 0), (c, 0)] {
        store
            .set_balance(
                &AccountId::parse(account).unwrap(),
                Balance::new(balance).unwrap(),
            )
            .await
            .unwrap()
            .ensure_set()
            .unwrap();
    }
    let mut record = Record {
        tx: postings_tx("far", &[(a, "x", 1)]),
        accepted_at_ms: 1,
        saga: None,
    };
    record.tx = postings_tx("far", &[(a, b, 30), (b, c, 10), (a, c, 5)]);
    let fields = ["balance", "pending", "incoming"];
    let mut steps = Vec::new();
    let outcome = loop {
        let first = store.apply_records(&[record.clone()]).await.unwrap();
        let again = store.apply_records(&[record.clone()]).await.unwrap();
        match (&first[0], &again[0]) {
            (Progress::Next(next), Progress::Next(repeat)) => {
                assert_eq!(next, repeat, "a redelivered step answers as the first");
                let step = next.saga.as_ref().unwrap();
                if matches!(step, SagaStep::Commit { .. }) && steps.len() == 2 {
                    // Every slot reserved; nothing moved yet.
                    for (account, expected) in [(a, [100, 35, 0]), (b, [0, 0, 30]), (c, [0, 0, 15])]
                    {
                        assert_eq!(
                            account_fields(&store, account, &fields).await,
                            expected,
                            "{account}"
                        );
                    }
                    the_reservation_holds(&store, a, b, c, next).await;
                }
                steps.push(step.kind().as_str());
                record = next.clone();
            }
            (
                Progress::Ended {
                    applied:
                        Applied {
                            outcome,
                            duplicate: false,
                        },
                    recorded: false,
                    ..
                },
                Progress::Ended {
                    applied:
                        Applied {
                            duplicate: true, ..
                        },
                    ..
                },
            ) => break *outcome,
            other => panic!("after {steps:?}: {other:?}"),
        }
    };
    assert_eq!(steps, ["reserve", "reserve", "commit", "commit", "commit"]);
    assert_eq!(
        outcome,
        Outcome::Applied {
            balance_after: Balance::new(65).unwrap()
        }
    );
    for (account, expected) in [(a, [65, 0, 0]), (b, [20, 0, 0]), (c, [15, 0, 0])] {
        assert_eq!(
            account_fields(&store, account, &fields).await,
            expected,
            "{account}"
        );
    }
    // The same id with another body: never the first one's outcome, and
    // nothing moves (the consumer sends it to the DLQ).
    let other = Record {
        tx: postings_tx("far", &[(a, b, 31), (b, c, 10), (a, c, 5)]),
        accepted_at_ms: 1,
        saga: None,
    };
    let answer = store
        .apply_records(std::slice::from_ref(&other))
        .await
        .unwrap();
    assert_eq!(answer[0], Progress::Mismatch);
    assert_eq!(account_fields(&store, a, &fields).await, [65, 0, 0]);
    // A later step that meets another body's flag stops loudly: the slots
    // before it would keep their reservations.
    let later = Record {
        saga: Some(SagaStep::Reserve {
            on: AccountId::parse(b).unwrap(),
            votes: txengine::wire::Votes::none(other.tx.movement.postings().unwrap()),
        }),
        ..other
    };
    let answer = store.apply_records(&[later]).await;
    assert!(answer.is_err(), "{answer:?}");
}

/// A step of postings between slots runs only as the store builds it: a
/// call of another shape, a commit where the slot refused, and a commit or
/// cancel where it never reserved are errors that change nothing (on one
/// Redis, where every account shares the slot the steps run in).
#[tokio::test(flavor = "multi_thread")]
async fn a_posting_step_runs_only_as_the_store_builds_it() {
    use txengine::domain::{AccountId, RejectReason};
    use txengine::wire::{FailedPosting, Record, SagaStep, Votes};
    let store = store_with(&[("a", 1), ("b", 0), ("c", 10)]).await;
    let on = AccountId::parse("a").unwrap();
    let steps_of = |tx: txengine::domain::Transaction| {
        move |saga| Record {
            tx: tx.clone(),
            accepted_at_ms: 1,
            saga: Some(saga),
        }
    };
    // c holds 10 of the 5: its reserve keeps them, its cancel gives them
    // back.
    let kept = steps_of(postings_tx("kept", &[("c", "b", 5)]));
    let c = AccountId::parse("c").unwrap();
    let votes = Votes::none(
        postings_tx("kept", &[("c", "b", 5)])
            .movement
            .postings()
            .unwrap(),
    );
    store
        .apply_records(&[kept(SagaStep::Reserve {
            on: c.clone(),
            votes,
        })])
        .await
        .unwrap();
    assert_eq!(store.account(&c).await.unwrap().unwrap().pending, 5);
    let failed = FailedPosting {
        posting: 0,
        reason: RejectReason::InsufficientFunds,
    };
    store
        .apply_records(&[kept(SagaStep::Cancel {
            on: c.clone(),
            failed,
            assets: vec![None],
        })])
        .await
        .unwrap();
    assert_eq!(store.account(&c).await.unwrap().unwrap().pending, 0);

    let tx = postings_tx("step", &[("a", "b", 5)]);
    let postings = tx.movement.postings().unwrap().clone();
    let record = steps_of(tx);
    let commit = record(SagaStep::Commit {
        on: on.clone(),
        assets: vec![None],
    });
    let cancel = record(SagaStep::Cancel {
        on: on.clone(),
        failed,
        assets: vec![None],
    });
    for never_reserved in [&commit, &cancel] {
        let error = store
            .apply_records(std::slice::from_ref(never_reserved))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("did not reserve"), "{error}");
    }
    // a holds 1 of the 5: the reserve refuses, and no commit follows it.
    let reserve = record(SagaStep::Reserve {
        on: on.clone(),
        votes: Votes::none(&postings),
    });
    store.apply_records(&[reserve]).await.unwrap();
    let error = store.apply_records(&[commit]).await.unwrap_err();
    assert!(error.to_string().contains("this slot refused"), "{error}");
    store.apply_records(&[cancel]).await.unwrap();
    assert_eq!(store.balance(&on).await.unwrap().unwrap().minor_units(), 1);
    let a = store.account(&on).await.unwrap().unwrap();
    assert_eq!(a.pending, 0, "a refused reserve keeps nothing");

    // A call of another shape than the header's: refused before a write.
    let layout = store.layout();
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let flag = layout.step("a", "raw", "reserve");
    let mut args: Vec<String> = ["reserve", "0", "fp", "60", "1", "raw", "3600000", ""]
        .map(String::from)
        .to_vec();
    args.extend(["2", "a", "b", "2", "1", "2", "1", "1", "2", "5", "", "", ""].map(String::from));
    let keys = [
        flag.clone(),
        layout.seq(0),
        layout.account("a"),
        layout.history("a"),
        layout.account("b"),
        layout.history("b"),
        layout.step("a", "raw", "reserve"),
    ];
    // One argument too many; a step it does not know (with every key a
    // commit takes); a commit without its reserve flag's key.
    for (step, extra, keys) in [
        ("reserve", Some("x"), &keys[..6]),
        ("fold", None, &keys[..]),
        ("commit", None, &keys[..6]),
    ] {
        let mut args = args.clone();
        args[0] = step.into();
        args.extend(extra.map(String::from));
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(txengine::store::Store::script_source("apply_many").unwrap())
            .arg(1 + keys.len())
            .arg(layout.order(0, "raw"))
            .arg(keys)
            .arg(-1)
            .arg(1)
            .arg("posting_step")
            .arg(keys.len())
            .arg(args.len())
            .arg(&args);
        let answer: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        let error = answer.expect_err("refused");
        assert!(
            error.to_string().contains("malformed call"),
            "{step}: {error}"
        );
        let flag_set: bool = redis::cmd("EXISTS")
            .arg(&flag)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!flag_set, "{step} wrote its flag");
    }
}
