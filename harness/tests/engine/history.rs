//! Each account's history through the whole engine: written by the scripts
//! that move the money (both sides of a transfer, each saga step, each
//! hold change, refusals, the admin's sets), read newest first by page,
//! replayed to the balance, and the balance at a time; on one Redis and on
//! a Redis Cluster (where the transfer between slots is a saga).

use std::collections::HashSet;
use std::time::Duration;

use harness::stack::Stack;
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use txengine::domain::{AccountId, Balance, Movement, Transaction, TxId};
use txengine::store::{BalanceAt, HistoryQuery, Layout, RedisTopology, Store, StoreSettings};

const SETTLE: Duration = Duration::from_secs(60);

/// Every entry of `account`'s history, newest first, read `page` at a time
/// by following the cursors.
async fn whole_history(s: &Stack, account: &str, page: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => {
                format!("/accounts/{account}/transactions?limit={page}&cursor={cursor}")
            }
            None => format!("/accounts/{account}/transactions?limit={page}"),
        };
        let (status, body) = s.get(&path).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let got = body["entries"].as_array().unwrap().clone();
        assert!(got.len() <= page, "{body}");
        entries.extend(got);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return entries,
        }
    }
}

/// Replays `newest_first` from the oldest: each entry's balance_after must
/// be the sum of the deltas so far; answers the balance it ends on.
fn replay(account: &str, newest_first: &[Value]) -> i64 {
    let mut balance: i64 = 0;
    for entry in newest_first.iter().rev() {
        balance += entry["delta"].as_i64().unwrap();
        assert_eq!(
            Some(balance),
            entry["balance_after"].as_i64(),
            "{account}: replayed to {balance} at {entry}"
        );
    }
    balance
}

fn find<'a>(entries: &'a [Value], id: &str, status: &str) -> &'a Value {
    let found: Vec<&Value> = entries
        .iter()
        .filter(|e| e["id"] == id && e["status"] == status)
        .collect();
    assert_eq!(found.len(), 1, "{id} {status} in {entries:#?}");
    found[0]
}

/// An account of `prefix` in another slot than `of` on a cluster.
fn elsewhere(layout: &Layout, of: &str, prefix: &str) -> String {
    (0..)
        .map(|k| format!("{prefix}{k}"))
        .find(|name| layout.shards() == 1 || !layout.same_slot(name, of))
        .unwrap()
}

/// Every kind of change writes its entries where the contract says, pages
/// come newest first and join up without a gap or a repeat, each account's
/// entries replay to its balance, `since`/`until` bound a page, and the
/// balance at a time is the one after the last entry by then.
#[rstest]
#[case::single(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_an_entry_and_the_history_replays_to_the_balance(
    #[case] topology: RedisTopology,
) {
    let s = Stack::start(crate::infra_of(topology), "history")
        .await
        .unwrap();
    let layout = Layout::new(&s.config.namespace, topology);
    let a = "alice";
    let b = elsewhere(&layout, a, "bob-");
    s.set_balance(a, 100).await.unwrap();
    s.set_balance(&b, 0).await.unwrap();
    let posts = [
        json!({"id": "d-1", "account": a, "amount": 10}),
        json!({"id": "d-2", "account": a, "amount": 1000}),
        json!({"id": "c-1", "type": "credit", "account": a, "amount": 5}),
        json!({"id": "t-1", "type": "transfer", "account": a, "to": b, "amount": 20}),
        json!({"id": "t-2", "type": "transfer", "account": a, "to": "nobody", "amount": 1}),
        json!({"id": "h-1", "type": "hold", "account": a, "to": b, "amount": 30}),
        json!({"id": "h-2", "type": "hold", "account": a, "amount": 5}),
        // Refused for an account that does not exist: no history made up.
        json!({"id": "h-ghost", "type": "hold", "account": "ghost", "amount": 1}),
        json!({"id": "d-ghost", "account": "ghost", "amount": 1}),
    ];
    for body in &posts {
        let (status, answer) = s.post(body).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let id = body["id"].as_str().unwrap().to_owned();
        s.wait_settled(&[id], SETTLE).await.unwrap();
    }
    for body in [
        json!({"id": "cap-1", "type": "capture", "hold": "h-1", "amount": 10}),
        json!({"id": "v-1", "type": "void", "hold": "h-2"}),
        json!({"id": "v-2", "type": "void", "hold": "h-2"}),
    ] {
        let (status, answer) = s.post(&body).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let id = body["id"].as_str().unwrap().to_owned();
        s.wait_settled(&[id], SETTLE).await.unwrap();
    }
    s.wait_drained(SETTLE).await.unwrap();
    s.set_balance(&b, 50).await.unwrap();

    let saga = topology == RedisTopology::Cluster;
    let of_a = whole_history(&s, a, 3).await;
    let of_b = whole_history(&s, &b, 2).await;
    let balance = |account: String| {
        let s = &s;
        async move { s.balance(&account).await.unwrap().unwrap() }
    };
    assert_eq!(replay(a, &of_a), balance(a.to_owned()).await);
    assert_eq!(replay(&b, &of_b), balance(b.clone()).await);

    // Newest first, each entry once (pages joined up by their cursors).
    let times: Vec<&str> = of_a.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let whole_page = whole_history(&s, a, 1000).await;
    assert_eq!(of_a, whole_page, "pages of 3 join up to the whole");

    // What each change wrote.
    let set = &of_a[of_a.len() - 1];
    assert_eq!(
        (set["type"].clone(), set["amount"].clone(), set.get("id")),
        (json!("set"), json!(100), None),
        "{set}"
    );
    assert_eq!(find(&of_a, "d-1", "applied")["delta"], -10);
    let refused = find(&of_a, "d-2", "rejected");
    assert_eq!(
        (refused["delta"].clone(), refused["reason"].clone()),
        (json!(0), json!("insufficient_funds"))
    );
    assert_eq!(find(&of_a, "c-1", "applied")["delta"], 5);
    if saga && !layout.same_slot(a, "nobody") {
        // Its credit refused (nobody there), the debit was refunded.
        assert_eq!(find(&of_a, "t-2", "debited")["delta"], -1);
        assert_eq!(find(&of_a, "t-2", "refunded")["delta"], 1);
    } else {
        assert_eq!(find(&of_a, "t-2", "rejected")["reason"], "unknown_account");
    }
    if saga {
        assert_eq!(find(&of_a, "t-1", "debited")["delta"], -20);
        assert_eq!(find(&of_a, "t-1", "released")["delta"], 0);
        let credited = find(&of_b, "t-1", "credited");
        assert_eq!(
            (credited["delta"].clone(), credited["counterparty"].clone()),
            (json!(20), json!(a))
        );
        assert_eq!(find(&of_a, "cap-1", "capturing")["delta"], -10);
        assert_eq!(find(&of_b, "cap-1", "credited")["delta"], 10);
    } else {
        let out = find(&of_a, "t-1", "applied");
        assert_eq!(
            (out["delta"].clone(), out["counterparty"].clone()),
            (json!(-20), json!(b))
        );
        assert_eq!(find(&of_b, "t-1", "applied")["counterparty"], a);
        assert_eq!(find(&of_a, "cap-1", "captured")["delta"], -10);
        assert_eq!(find(&of_b, "cap-1", "captured")["delta"], 10);
    }
    assert_eq!(find(&of_a, "h-1", "held")["delta"], 0);
    assert_eq!(find(&of_a, "h-1", "held")["hold"], "h-1");
    assert_eq!(
        find(&of_a, "cap-1", if saga { "capturing" } else { "captured" })["hold"],
        "h-1"
    );
    assert_eq!(find(&of_a, "v-1", "voided")["delta"], 0);
    assert_eq!(find(&of_a, "v-2", "rejected")["reason"], "hold_not_active");
    assert!(
        of_b.iter().all(|e| e["id"] != "t-2"),
        "a refusal is the source's only"
    );
    let (status, ghost) = s.get("/accounts/ghost/transactions").await.unwrap();
    assert_eq!(
        (status, ghost["entries"].clone()),
        (StatusCode::OK, json!([])),
        "no history for an account that does not exist: {ghost}"
    );
    let b_set = &of_b[0];
    assert_eq!(
        (b_set["type"].clone(), b_set["delta"].clone()),
        (json!("set"), json!(20)),
        "{b_set}"
    );
    let mut seen = HashSet::new();
    for entry in &of_a {
        assert!(
            seen.insert((entry["id"].to_string(), entry["status"].to_string())),
            "twice: {entry}"
        );
    }

    // since (inclusive) and until (exclusive) bound a page.
    let middle = of_a[of_a.len() / 2]["at"].as_str().unwrap().to_owned();
    let (_, since) = s
        .get(&format!(
            "/accounts/{a}/transactions?since={middle}&limit=1000"
        ))
        .await
        .unwrap();
    let (_, until) = s
        .get(&format!(
            "/accounts/{a}/transactions?until={middle}&limit=1000"
        ))
        .await
        .unwrap();
    let since = since["entries"].as_array().unwrap();
    let until = until["entries"].as_array().unwrap();
    assert!(since
        .iter()
        .all(|e| e["at"].as_str().unwrap() >= middle.as_str()));
    assert!(until
        .iter()
        .all(|e| e["at"].as_str().unwrap() < middle.as_str()));
    assert_eq!(
        since.len() + until.len(),
        of_a.len(),
        "since and until split the history"
    );

    // The balance at each entry's time is the one after the newest entry
    // of that millisecond or before.
    for entry in &of_a {
        let at = entry["at"].as_str().unwrap();
        let expected = of_a
            .iter()
            .find(|e| e["at"].as_str().unwrap() <= at)
            .unwrap();
        let (status, body) = s.get(&format!("/balance/{a}?at={at}")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["balance"], expected["balance_after"], "{at}: {body}");
    }
    let (status, body) = s
        .get(&format!("/balance/{a}?at=2000-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "before the account existed: {body}"
    );

    // Bad queries are refused, naming the parameter; a key must see the account.
    for (query, status) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("limit=1001", StatusCode::UNPROCESSABLE_ENTITY),
        ("cursor=abc", StatusCode::UNPROCESSABLE_ENTITY),
        ("since=yesterday", StatusCode::UNPROCESSABLE_ENTITY),
        ("sort=asc", StatusCode::BAD_REQUEST),
    ] {
        let (got, body) = s
            .get(&format!("/accounts/{a}/transactions?{query}"))
            .await
            .unwrap();
        assert_eq!(got, status, "{query}: {body}");
    }
    let (got, body) = s.get(&format!("/balance/{a}?at=now")).await.unwrap();
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let bobs = s.create_key(&[&b], None, None).await.unwrap();
    let bob = s.api.with_api_key(&bobs.secret).unwrap();
    let (got, _) = bob
        .get(&format!("/accounts/{a}/transactions"))
        .await
        .unwrap();
    assert_eq!(got, StatusCode::FORBIDDEN);
    let (got, _) = bob.get(&format!("/balance/{a}?at={middle}")).await.unwrap();
    assert_eq!(got, StatusCode::FORBIDDEN);
    let (got, _) = bob
        .get(&format!("/accounts/{b}/transactions"))
        .await
        .unwrap();
    assert_eq!(got, StatusCode::OK);
    s.stop().await.unwrap();
}

/// Metadata is bound to the id with the movement (reordered keys are the
/// same request, other metadata a conflict), answered by GET, and written
/// in the history of every account the transaction touches: both sides of
/// a transfer (each step of a saga on a cluster), a hold's and its
/// capture's own; a refused one writes nothing.
#[rstest]
#[case::single(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn metadata_is_bound_to_the_id_and_kept_wherever_the_transaction_is(
    #[case] topology: RedisTopology,
) {
    let s = Stack::start(crate::infra_of(topology), "metadata")
        .await
        .unwrap();
    let layout = Layout::new(&s.config.namespace, topology);
    let a = "payer";
    let b = elsewhere(&layout, a, "payee-");
    s.set_balance(a, 100).await.unwrap();
    s.set_balance(&b, 0).await.unwrap();
    let order = json!({"order": "o-1", "note": "é | line\nbreak"});
    let transfer = |metadata: Value| json!({"id": "t-m", "type": "transfer", "account": a, "to": b, "amount": 7, "metadata": metadata});
    let (status, answer) = s.post(&transfer(order.clone())).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let reordered = json!({"note": "é | line\nbreak", "order": "o-1"});
    let (status, answer) = s.post(&transfer(reordered)).await.unwrap();
    assert!(status.is_success(), "the same request: {status} {answer}");
    for other in [
        json!(null),
        json!({"order": "o-2"}),
        json!({"order": "o-1"}),
    ] {
        let (status, answer) = s.post(&transfer(other.clone())).await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{other}: {answer}"
        );
        assert_eq!(
            answer["type"], "urn:txengine:problem:id-conflict",
            "{other}: {answer}"
        );
    }
    let hold = json!({"id": "h-m", "type": "hold", "account": a, "amount": 5, "metadata": {"cart": "c-9"}});
    let capture =
        json!({"id": "cap-m", "type": "capture", "hold": "h-m", "metadata": {"shipped": "yes"}});
    let batch_item = json!({"id": "b-m", "type": "credit", "account": a, "amount": 1, "metadata": {"batch": "1"}});
    let too_big =
        json!({"id": "big-m", "account": a, "amount": 1, "metadata": {"k": "v".repeat(513)}});
    let (status, answer) = s.post(&too_big).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("512"),
        "{answer}"
    );
    for body in [&hold, &capture] {
        let (status, answer) = s.post(body).await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let id = body["id"].as_str().unwrap().to_owned();
        s.wait_settled(&[id], SETTLE).await.unwrap();
    }
    let (status, answer) = s
        .post_batch(std::slice::from_ref(&batch_item))
        .await
        .unwrap();
    assert!(status.is_success(), "{answer}");
    let ids = ["t-m", "b-m"].map(str::to_owned);
    s.wait_settled(&ids, SETTLE).await.unwrap();
    s.wait_drained(SETTLE).await.unwrap();

    for (id, metadata) in [
        ("t-m", &order),
        ("h-m", &hold["metadata"]),
        ("cap-m", &capture["metadata"]),
        ("b-m", &batch_item["metadata"]),
    ] {
        let (status, got) = s.get(&format!("/transactions/{id}")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(&got["metadata"], metadata, "{id}: {got}");
    }
    let (status, got) = s.get("/transactions/big-m").await.unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "refused, nothing written: {got}"
    );

    let of_a = whole_history(&s, a, 1000).await;
    let of_b = whole_history(&s, &b, 1000).await;
    let saga = topology == RedisTopology::Cluster;
    let (debited, credited) = if saga {
        ("debited", "credited")
    } else {
        ("applied", "applied")
    };
    assert_eq!(find(&of_a, "t-m", debited)["metadata"], order);
    assert_eq!(find(&of_b, "t-m", credited)["metadata"], order);
    if saga {
        assert_eq!(find(&of_a, "t-m", "released")["metadata"], order);
    }
    assert_eq!(find(&of_a, "h-m", "held")["metadata"], hold["metadata"]);
    assert_eq!(
        find(&of_a, "cap-m", "captured")["metadata"],
        capture["metadata"]
    );
    assert_eq!(
        find(&of_a, "b-m", "applied")["metadata"],
        batch_item["metadata"]
    );
    assert!(of_a.iter().all(|e| e["id"] != "big-m"), "{of_a:#?}");
    assert_eq!(replay(a, &of_a), s.balance(a).await.unwrap().unwrap());
    s.stop().await.unwrap();
}

/// History is trimmed by the scripts that write it: entries older than the
/// retention go (a whole stream node at a time), the newest older one
/// stays, so the balance at any time within the retention is known and a
/// time before the oldest entry kept is refused as before the retention.
/// With retention 0 no history is written at all.
#[tokio::test(flavor = "multi_thread")]
async fn history_is_trimmed_to_its_retention_by_the_writes_themselves() {
    let infra = crate::infra();
    let store = |namespace: &'static str, keep: u64| {
        Store::connect(StoreSettings {
            url: &infra.redis_url,
            topology: infra.redis_topology,
            namespace,
            outcome_ttl_secs: 60,
            history_keep_secs: keep,
            lease_ms: 30_000,
            response_timeout: Duration::from_secs(5),
            default_asset: Default::default(),
        })
    };
    let account = AccountId::parse("trimmed").unwrap();
    let credit = |id: String| Transaction {
        asset: None,
        metadata: Default::default(),
        id: TxId::parse(&id).unwrap(),
        movement: Movement::Credit {
            account: account.clone(),
            amount: txengine::domain::Amount::new(1).unwrap(),
        },
    };
    let kept = store("history-trim", 1).await.unwrap();
    kept.set_balance(&account, Balance::new(0).unwrap())
        .await
        .unwrap()
        .ensure_set()
        .unwrap();
    // More than one stream node (100 entries), all older than a second soon.
    let old: Vec<Transaction> = (0..250).map(|k| credit(format!("old-{k}"))).collect();
    kept.apply_batch(&old).await.unwrap();
    let whole = HistoryQuery {
        limit: 1000,
        ..Default::default()
    };
    let before_all = kept.history(&account, &whole).await.unwrap();
    assert_eq!(before_all.len(), 251, "the set and 250 credits");
    let newest_old = before_all[0].clone();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // The writes look for what to trim every 100th entry.
    let new: Vec<Transaction> = (0..100).map(|k| credit(format!("new-{k}"))).collect();
    kept.apply_batch(&new).await.unwrap();
    let after = kept.history(&account, &whole).await.unwrap();
    assert!(
        after.len() < 351,
        "whole nodes of old entries are gone ({} left)",
        after.len()
    );
    assert!(
        after.iter().any(|e| e.position == newest_old.position),
        "the newest older entry stays"
    );
    let oldest = after.last().unwrap();
    match kept.balance_at(&account, oldest.at_ms - 1).await.unwrap() {
        BalanceAt::BeforeRetention { oldest_ms } => assert_eq!(oldest_ms, oldest.at_ms),
        other => panic!("before the oldest entry kept: {other:?}"),
    }
    assert_eq!(
        kept.balance_at(&account, newest_old.at_ms).await.unwrap(),
        BalanceAt::Known {
            balance: newest_old.balance_after,
            since_ms: newest_old.at_ms
        }
    );
    let replayed: i64 = after.iter().map(|e| e.delta).sum();
    assert_eq!(
        replayed + oldest.balance_after - oldest.delta,
        kept.balance(&account).await.unwrap().unwrap().minor_units(),
        "from the oldest entry kept, the history still replays to the balance"
    );

    let off = store("history-off", 0).await.unwrap();
    off.set_balance(&account, Balance::new(5).unwrap())
        .await
        .unwrap()
        .ensure_set()
        .unwrap();
    off.apply_batch(&[credit("off-1".into())]).await.unwrap();
    assert!(off.history_is_off());
    assert!(off
        .history(
            &account,
            &HistoryQuery {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        off.balance_at(&account, u64::MAX / 2).await.unwrap(),
        BalanceAt::Unknown
    );
}

/// The invariants judge each account's history: one that does not replay
/// to its balance (an entry no script wrote) is a violation, named.
#[tokio::test(flavor = "multi_thread")]
async fn the_invariants_catch_a_history_that_does_not_replay() {
    let infra = crate::infra();
    let s = Stack::start(infra, "history-judge").await.unwrap();
    s.set_balance("judged", 10).await.unwrap();
    let ledger = harness::workload::Ledger {
        start: [("judged".to_owned(), 10)].into(),
        ..Default::default()
    };
    let verdict = harness::invariants::check(infra, &s.config, &ledger)
        .await
        .unwrap();
    assert!(verdict.holds(), "{:?}", verdict.violations);
    let layout = Layout::new(&s.config.namespace, s.config.redis_topology);
    let client = redis::Client::open(infra.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(layout.history("judged"))
        .arg("*")
        .arg(&[
            "id", "forged", "type", "credit", "amount", "5", "delta", "5", "cp", "",
        ])
        .arg(&[
            "status", "applied", "reason", "", "bal", "15", "hold", "", "meta", "",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let verdict = harness::invariants::check(infra, &s.config, &ledger)
        .await
        .unwrap();
    assert!(
        verdict
            .violations
            .iter()
            .any(|v| v.contains("judged") && v.contains("replay to 15, its balance is 10")),
        "{:?}",
        verdict.violations
    );
    s.stop().await.unwrap();
}
