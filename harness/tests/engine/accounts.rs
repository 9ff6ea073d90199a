//! Accounts with an asset and bounds, over real HTTP with the real Redis and
//! Kafka behind: made and changed by the admin, read by a key, and kept by
//! every script that moves money, on one Redis and on a Redis Cluster.

use std::time::Duration;

use harness::stack::{isolated_config, Stack};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use txengine::limits::MAX_MINOR_UNITS;
use txengine::store::RedisTopology;

const SETTLE: Duration = Duration::from_secs(30);
const MAX: i64 = MAX_MINOR_UNITS as i64;

async fn stack(topology: RedisTopology, name: &str) -> Stack {
    Stack::start_with(isolated_config(crate::infra_of(topology), name))
        .await
        .expect("engine starts")
}

/// PUT /accounts/{account} answered `expected`; its body.
async fn put(s: &Stack, account: &str, body: Value, expected: StatusCode) -> Value {
    let (status, answer) = s.put_account(account, &body).await.unwrap();
    assert_eq!(status, expected, "PUT /accounts/{account} {body}: {answer}");
    answer
}

/// GET /accounts/{account}, which must exist.
async fn account(s: &Stack, account: &str) -> Value {
    let (status, body) = s.get(&format!("/accounts/{account}")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The detail of a 422 (a rule broken), which must name `needle`.
fn assert_rule(body: &Value, needle: &str) {
    assert_eq!(body["status"], 422, "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(detail.contains(needle), "`{needle}` not in {detail:?}");
}

#[tokio::test]
async fn an_account_is_made_changed_and_read_and_a_refused_change_writes_nothing() {
    let s = stack(RedisTopology::Single, "accounts").await;
    let made = put(
        &s,
        "usd-a",
        json!({"asset": "USD/2", "min_balance": -500, "metadata": {"owner": "ops"}}),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        (
            &made["asset"],
            &made["min_balance"],
            &made["max_balance"],
            &made["balance"],
            &made["pending"],
            &made["available"],
            &made["metadata"]
        ),
        (
            &json!("USD/2"),
            &json!(-500),
            &json!(MAX),
            &json!(0),
            &json!(0),
            &json!(500),
            &json!({"owner": "ops"})
        ),
        "{made}"
    );
    assert!(
        made["created_at"].as_str().unwrap().ends_with('Z'),
        "{made}"
    );
    assert_eq!(account(&s, "usd-a").await, made, "as written");
    // The same body again: 200, the account as it was.
    let again = put(
        &s,
        "usd-a",
        json!({"asset": "USD/2", "min_balance": -500, "metadata": {"owner": "ops"}}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(again, made);
    assert_eq!(account(&s, "usd-a").await, made);
    // A field left out keeps its value.
    let capped = put(&s, "usd-a", json!({"max_balance": 1000}), StatusCode::OK).await;
    assert_eq!(
        (
            &capped["min_balance"],
            &capped["max_balance"],
            &capped["metadata"]
        ),
        (&json!(-500), &json!(1000), &json!({"owner": "ops"}))
    );

    // Refusals: 422 and nothing written.
    let refusals = [
        (json!({"asset": "EUR/2"}), "USD/2"),
        (
            json!({"min_balance": 10, "max_balance": 5}),
            "above max_balance",
        ),
        (json!({"min_balance": 2000}), "above max_balance"),
        (json!({"asset": "usd"}), "asset must match"),
        (json!({"min_balance": MAX + 1}), "min_balance must be"),
        (json!({"max_balance": -MAX - 1}), "max_balance must be"),
        (json!({"min_balance": 1.5}), "min_balance must be"),
    ];
    for (body, needle) in refusals {
        let answer = put(&s, "usd-a", body, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_rule(&answer, needle);
    }
    let (status, _) = s
        .put_account("usd-a", &json!({"colour": "red"}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(account(&s, "usd-a").await, capped, "nothing written");

    // The balance: below 0 down to min_balance, at most max_balance.
    let (status, set) = s.put_balance_raw("usd-a", -300).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(
        (&set["balance"], &set["asset"], &set["available"]),
        (&json!(-300), &json!("USD/2"), &json!(200))
    );
    for (balance, needle) in [(-501, "min_balance -500"), (1001, "max_balance 1000")] {
        let (status, body) = s.put_balance_raw("usd-a", balance).await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_rule(&body, needle);
    }
    // Bounds the balance would break are refused.
    for (body, needle) in [
        (json!({"min_balance": -100}), "min_balance -100"),
        (json!({"max_balance": -400}), "max_balance -400"),
    ] {
        let answer = put(&s, "usd-a", body, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_rule(&answer, needle);
    }
    let now = account(&s, "usd-a").await;
    assert_eq!(
        (&now["balance"], &now["min_balance"], &now["max_balance"]),
        (&json!(-300), &json!(-500), &json!(1000))
    );
    let (status, balance) = s.get("/balance/usd-a").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &balance["asset"],
            &balance["balance"],
            &balance["available"]
        ),
        (&json!("USD/2"), &json!(-300), &json!(200))
    );

    // The seed's setter makes a missing account of the default asset and
    // bounds.
    s.set_balance("seeded", 5).await.unwrap();
    let seeded = account(&s, "seeded").await;
    assert_eq!(
        (
            &seeded["asset"],
            &seeded["min_balance"],
            &seeded["max_balance"]
        ),
        (
            &json!(s.config.default_asset.as_str()),
            &json!(0),
            &json!(MAX)
        )
    );
    let (status, body) = s.put_balance_raw("seeded-low", -1).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // An account whose bounds leave out 0 cannot be made (its balance is 0).
    put(
        &s,
        "high",
        json!({"min_balance": 1}),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    for missing in ["seeded-low", "high"] {
        let (status, _) = s.get(&format!("/accounts/{missing}")).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing} was not made");
    }

    // Reads need a key whose scope matches; writes the admin token.
    let scoped = s.create_key(&["other-*"], None, None).await.unwrap();
    let scoped = s.with_api_key(&scoped.secret).unwrap();
    let (status, _) = scoped.get("/accounts/usd-a").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = scoped.get("/accounts/other-x").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let anonymous = harness::client::ApiClient::new(&s.url, "wrong", SETTLE).unwrap();
    let (status, _) = anonymous
        .put_account("usd-a", &json!({"max_balance": 5}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The asset a transaction names is part of what its id is bound to,
    // and must be one.
    let body = json!({"id": "f-1", "account": "usd-a", "amount": 1});
    let (status, _) = s.post(&body).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut named = body.clone();
    named["asset"] = json!("USD/2");
    let (status, answer) = s.post(&named).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(
        answer["type"], "urn:txengine:problem:id-conflict",
        "{answer}"
    );
    let (status, answer) = s
        .post(&json!({"id": "f-2", "account": "usd-a", "amount": 1, "asset": "dollars"}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_rule(&answer, "asset must match");

    // A floor counts what holds keep: with 150 held of -300, the floor may
    // not rise to -400 (-450 would be left to pay from).
    let hold = json!({"id": "h-a", "type": "hold", "account": "usd-a", "amount": 150});
    let (status, _) = s.post(&hold).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let held = s.wait_settled(&["h-a".to_owned()], SETTLE).await.unwrap();
    assert_eq!(held["h-a"]["status"], "held", "{held:?}");
    let answer = put(
        &s,
        "usd-a",
        json!({"min_balance": -400}),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_rule(&answer, "min_balance -400 plus 150");
    assert_eq!(account(&s, "usd-a").await["min_balance"], -500);
    s.stop().await.unwrap();
}

/// Made, then asked the same again: the second call writes nothing (the
/// store says so); a change of metadata alone is one.
#[tokio::test]
async fn the_same_change_again_writes_nothing() {
    use txengine::domain::{AccountChange, AccountId, Asset};
    use txengine::store::AccountPut;
    let store = crate::isolated_store(
        &format!("same-{}", uuid::Uuid::new_v4().simple()),
        &crate::infra().redis_url,
    )
    .await;
    let account = AccountId::parse("acct").unwrap();
    let change = AccountChange {
        asset: Some(Asset::parse("POINTS").unwrap()),
        ..Default::default()
    };
    let put = |change: AccountChange| {
        let (store, account) = (store.clone(), account.clone());
        async move {
            store
                .put_account(&account, &change)
                .await
                .unwrap()
                .unwrap()
                .0
        }
    };
    assert_eq!(put(change.clone()).await, AccountPut::Created);
    assert_eq!(put(change.clone()).await, AccountPut::Unchanged);
    assert_eq!(put(AccountChange::default()).await, AccountPut::Unchanged);
    let tagged = AccountChange {
        metadata: Some(serde_json::from_str(r#"{"k":"v"}"#).unwrap()),
        ..change
    };
    assert_eq!(put(tagged.clone()).await, AccountPut::Updated);
    assert_eq!(put(tagged).await, AccountPut::Unchanged);
}

/// Posts `items` as one batch (each accepted) and waits for their outcomes:
/// `(status, reason or balance_after)`, in the items' order.
async fn outcomes(s: &Stack, items: &[Value]) -> Vec<(String, Value)> {
    let (status, body) = s.post_batch(items).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<String> = items
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect();
    let settled = s.wait_settled(&ids, SETTLE).await.unwrap();
    ids.iter()
        .map(|id| {
            let view = &settled[id];
            let detail = match view.get("reason") {
                Some(reason) => reason.clone(),
                None => view["balance_after"].clone(),
            };
            (view["status"].as_str().unwrap().to_owned(), detail)
        })
        .collect()
}

fn applied(balance_after: i64) -> (String, Value) {
    ("applied".into(), json!(balance_after))
}

fn rejected(reason: &str) -> (String, Value) {
    ("rejected".into(), json!(reason))
}

/// Every kind that moves money keeps each account's bounds (pending money
/// counted) and never moves money between assets, applied one by one or
/// in batches, in one script or as a saga between cluster slots; what is
/// refused changes no balance.
#[rstest]
#[case::one_redis(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn money_moves_within_bounds_and_never_between_assets(#[case] topology: RedisTopology) {
    let s = stack(topology, "bounds").await;
    if topology == RedisTopology::Cluster {
        // On a cluster these pairs are sagas: the path this case tests.
        let layout = txengine::store::Layout::new(&s.config.namespace, topology);
        for (a, b) in [
            ("dollars", "euros"),
            ("dollars", "cap-full"),
            ("eur-2", "eur-3"),
        ] {
            assert!(!layout.same_slot(a, b), "{a} and {b} share a slot");
        }
    }
    for (name, body, balance) in [
        ("od", json!({"asset": "USD/2", "min_balance": -100}), 0),
        ("od-hold", json!({"asset": "USD/2", "min_balance": -50}), 0),
        ("cap", json!({"asset": "USD/2", "max_balance": 50}), 40),
        ("cap-full", json!({"asset": "USD/2", "max_balance": 50}), 50),
        ("dollars", json!({"asset": "USD/2"}), 100),
        ("euros", json!({"asset": "EUR/2"}), 100),
        ("usd-2", json!({"asset": "USD/2"}), 100),
        ("eur-2", json!({"asset": "EUR/2"}), 100),
        ("eur-3", json!({"asset": "EUR/2"}), 0),
    ] {
        put(&s, name, body, StatusCode::CREATED).await;
        let (status, answer) = s.put_balance_raw(name, balance).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let debit = |id: &str, account: &str, amount: i64| json!({"id": id, "type": "debit", "account": account, "amount": amount});
    let credit = |id: &str, account: &str, amount: i64| json!({"id": id, "type": "credit", "account": account, "amount": amount});
    let transfer = |id: &str, from: &str, to: &str, amount: i64| json!({"id": id, "type": "transfer", "account": from, "to": to, "amount": amount});
    let naming = |mut item: Value, asset: &str| {
        item["asset"] = json!(asset);
        item
    };
    // One batch; each account's items apply in order.
    let batch = [
        debit("b-1", "od", 60),
        debit("b-2", "od", 41),
        debit("b-3", "od", 40),
        credit("b-4", "cap", 11),
        credit("b-5", "cap", 10),
        transfer("b-6", "dollars", "euros", 10),
        transfer("b-7", "dollars", "cap-full", 1),
        transfer("b-8", "euros", "dollars", 1),
        json!({"id": "h-1", "type": "hold", "account": "od-hold", "amount": 30}),
        debit("b-9", "od-hold", 21),
        debit("b-10", "od-hold", 20),
        // A transaction naming an asset moves money only between accounts
        // that hold it.
        naming(debit("b-11", "euros", 1), "USD/2"),
        naming(credit("b-12", "usd-2", 1), "USD/2"),
        naming(
            json!({"id": "h-3", "type": "hold", "account": "usd-2", "amount": 1}),
            "EUR/2",
        ),
        naming(transfer("b-13", "eur-2", "eur-3", 5), "EUR/2"),
        naming(transfer("b-14", "eur-2", "eur-3", 5), "USD/2"),
    ];
    assert_eq!(
        outcomes(&s, &batch).await,
        [
            applied(-60),
            rejected("insufficient_funds"),
            applied(-100),
            rejected("max_balance_exceeded"),
            applied(50),
            rejected("asset_mismatch"),
            rejected("max_balance_exceeded"),
            rejected("asset_mismatch"),
            ("held".into(), json!(0)),
            rejected("insufficient_funds"),
            applied(-20),
            rejected("asset_mismatch"),
            applied(101),
            rejected("asset_mismatch"),
            applied(95),
            rejected("asset_mismatch"),
        ]
    );
    // Each outcome names the asset of the account it settled on (the
    // source's, also when a credit of another asset refused it).
    for (id, asset) in [
        ("b-1", "USD/2"),
        ("b-6", "USD/2"),
        ("b-8", "EUR/2"),
        ("b-13", "EUR/2"),
        ("b-14", "EUR/2"),
        ("h-1", "USD/2"),
    ] {
        let (status, view) = s.get(&format!("/transactions/{id}")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{id}: {view}");
        assert_eq!(view["asset"], json!(asset), "{id}: {view}");
    }
    // A capture takes the money its hold keeps, into the overdraft; one to
    // an account of another asset is refused.
    let hold =
        json!({"id": "h-2", "type": "hold", "account": "dollars", "to": "euros", "amount": 5});
    let capture = json!({"id": "c-1", "type": "capture", "hold": "h-1", "amount": 30});
    let other = json!({"id": "c-0", "type": "capture", "hold": "h-1", "asset": "EUR/2"});
    assert_eq!(
        outcomes(&s, &[other, capture, hold]).await,
        [
            rejected("asset_mismatch"),
            applied(-50),
            ("held".into(), json!(100))
        ]
    );
    let capture = json!({"id": "c-2", "type": "capture", "hold": "h-2", "amount": 5});
    assert_eq!(outcomes(&s, &[capture]).await, [rejected("asset_mismatch")]);
    for (name, balance) in [
        ("od", -100),
        ("od-hold", -50),
        ("cap", 50),
        ("cap-full", 50),
        ("dollars", 100),
        ("euros", 100),
        ("usd-2", 101),
        ("eur-2", 95),
        ("eur-3", 5),
    ] {
        let (status, body) = s.get(&format!("/balance/{name}")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["balance"], balance, "{name}: {body}");
    }
    s.stop().await.unwrap();
}

/// The invariants judge bounds and assets: a balance outside its account's
/// bounds, an account that holds another asset than it was made with, and
/// money that moved from one asset to another are each a violation, named.
#[tokio::test(flavor = "multi_thread")]
async fn the_invariants_catch_a_balance_out_of_bounds_and_money_between_assets() {
    use harness::workload::{AccountSpec, Ledger};
    let infra = crate::infra();
    let s = stack(RedisTopology::Single, "bounds-judge").await;
    let specs = [
        (
            "judge-usd",
            AccountSpec {
                asset: "USD/2".into(),
                min_balance: 0,
                max_balance: 100,
            },
        ),
        (
            "judge-eur",
            AccountSpec {
                asset: "EUR/2".into(),
                ..AccountSpec::default()
            },
        ),
    ];
    let mut ledger = Ledger::default();
    for (name, spec) in &specs {
        put(&s, name, spec.request_body(), StatusCode::CREATED).await;
        s.set_balance(name, 50).await.unwrap();
        ledger.start.insert(name.to_string(), 50);
        ledger.accounts.insert(name.to_string(), spec.clone());
    }
    let verdict = harness::invariants::check(infra, &s.config, &ledger)
        .await
        .unwrap();
    assert!(verdict.holds(), "{:?}", verdict.violations);
    // 100 moved from the euros to the dollars, past the dollars' cap and
    // below the euros' floor, and the euros relabelled: writes no script
    // makes.
    let layout = txengine::store::Layout::new(&s.config.namespace, s.config.redis_topology);
    let client = redis::Client::open(infra.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (name, fields) in [
        ("judge-usd", vec!["balance", "150"]),
        ("judge-eur", vec!["balance", "-50", "asset", "GBP/2"]),
    ] {
        let _: i64 = redis::cmd("HSET")
            .arg(layout.account(name))
            .arg(&fields)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let verdict = harness::invariants::check(infra, &s.config, &ledger)
        .await
        .unwrap();
    for needle in [
        "account judge-usd balance 150 is out of its bounds 0..=100",
        "account judge-eur balance -50 is out of its bounds",
        "account judge-eur holds Some(\"GBP/2\"), made with EUR/2",
        "asset USD/2: its accounts hold 150",
        "asset EUR/2: its accounts hold -50",
    ] {
        assert!(
            verdict.violations.iter().any(|v| v.contains(needle)),
            "`{needle}` not among {:?}",
            verdict.violations
        );
    }
    // A record whose holds keep more than it may pay is read as an error,
    // never served.
    let _: i64 = redis::cmd("HSET")
        .arg(layout.account("judge-usd"))
        .arg(&["balance", "10", "pending", "11"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let (status, body) = s.get("/balance/judge-usd").await.unwrap();
    assert!(status.is_server_error(), "{status} {body}");
    let verdict = harness::invariants::check(infra, &s.config, &ledger)
        .await
        .unwrap();
    let needle = "judge-usd: pending 11 leaves its balance Some(10) below its min_balance 0";
    assert!(
        verdict.violations.iter().any(|v| v.contains(needle)),
        "`{needle}` not among {:?}",
        verdict.violations
    );
    s.stop().await.unwrap();
}
