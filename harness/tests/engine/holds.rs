//! Holds (two-phase) through the whole engine: a hold reserves, a capture
//! moves part or all of it, a void or the engine's expiry releases it, and
//! a hold ends exactly once, on one Redis and on a Redis Cluster (where a
//! capture to an account in another slot is a saga).

use std::time::{Duration, Instant};

use harness::infra::Infra;
use harness::stack::{isolated_config, Stack};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::{json, Value};
use txengine::store::{Layout, RedisTopology};

const SETTLE: Duration = Duration::from_secs(60);

/// An account of `prefix` whose slot differs from `of`'s on a cluster (on
/// one Redis every account shares the slot).
fn elsewhere(layout: &Layout, of: &str, prefix: &str) -> String {
    (0..)
        .map(|k| format!("{prefix}{k}"))
        .find(|name| layout.shards() == 1 || !layout.same_slot(name, of))
        .expect("some name lands elsewhere")
}

async fn funds(s: &Stack, account: &str) -> (u64, u64, u64) {
    let (status, body) = s.get(&format!("/balance/{account}")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let field = |name: &str| body[name].as_u64().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        field("available"),
        field("balance") - field("pending"),
        "{body}"
    );
    (field("balance"), field("pending"), field("available"))
}

/// Posts `body` (expecting 202) and waits for its outcome.
async fn settle(s: &Stack, body: Value) -> Value {
    let (status, answer) = s.post(&body).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body} -> {answer}");
    let id = body["id"].as_str().unwrap().to_owned();
    let mut settled = s
        .wait_settled(std::slice::from_ref(&id), SETTLE)
        .await
        .unwrap();
    settled.remove(&id).unwrap()
}

fn rejected(view: &Value, reason: &str) {
    assert_eq!(
        (view["status"].as_str(), view["reason"].as_str()),
        (Some("rejected"), Some(reason)),
        "{view}"
    );
}

/// Every rule of a hold's life, each checked against the balance it leaves:
/// a hold keeps money from debits and other holds, a capture above it is
/// refused and leaves it, a capture of part moves that part (to `to`, in
/// another slot on a cluster: a saga) and releases the rest, and after it
/// every capture or void finds the hold ended; a void releases all; the
/// setter may not go below pending; unknown holds and foreign fields are
/// 422; a key must see the hold's account.
#[rstest]
#[case::single(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_reserves_and_ends_once_by_capture_or_void(#[case] topology: RedisTopology) {
    let s = Stack::start(crate::infra_of(topology), "holds-life")
        .await
        .unwrap();
    let layout = Layout::new(&s.config.namespace, topology);
    let payer = "payer";
    let payee = elsewhere(&layout, payer, "payee-");
    s.set_balance(payer, 100).await.unwrap();
    s.set_balance(&payee, 0).await.unwrap();

    let held = settle(
        &s,
        json!({"id": "h-1", "type": "hold", "account": payer, "to": payee, "amount": 60}),
    )
    .await;
    assert_eq!(held["status"], "held", "{held}");
    assert_eq!(funds(&s, payer).await, (100, 60, 40));

    // What the hold keeps may not leave by a debit, a transfer or a hold.
    let short = settle(&s, json!({"id": "d-1", "account": payer, "amount": 41})).await;
    rejected(&short, "insufficient_funds");
    let too_much = settle(
        &s,
        json!({"id": "h-2", "type": "hold", "account": payer, "amount": 41}),
    )
    .await;
    rejected(&too_much, "insufficient_funds");
    // A transfer (on a cluster: a saga's debit) may take what is
    // available and no more.
    let short = settle(
        &s,
        json!({"id": "t-0", "type": "transfer", "account": payer, "to": payee, "amount": 41}),
    )
    .await;
    rejected(&short, "insufficient_funds");
    let moved = settle(
        &s,
        json!({"id": "t-1", "type": "transfer", "account": payer, "to": payee, "amount": 40}),
    )
    .await;
    assert_eq!(moved["status"], "applied", "{moved}");
    assert_eq!(funds(&s, payer).await, (60, 60, 0));
    // A capture or void of a hold rejected is refused as not active.
    let of_rejected = settle(&s, json!({"id": "v-0", "type": "void", "hold": "h-2"})).await;
    rejected(&of_rejected, "hold_not_active");

    // The setter may not leave less than the holds keep.
    let (status, body) = s
        .put_balance_raw(payer, 59)
        .await
        .expect("PUT /balance answers");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(funds(&s, payer).await, (60, 60, 0), "nothing written");

    // A capture above the hold is refused and the hold stays.
    let above = settle(
        &s,
        json!({"id": "c-0", "type": "capture", "hold": "h-1", "amount": 61}),
    )
    .await;
    rejected(&above, "exceeds_hold");
    assert_eq!(funds(&s, payer).await, (60, 60, 0));

    // A key that may not touch the payer may not end its hold, and learns
    // no more than of a hold that does not exist (no 403 naming the payer).
    let payee_only = s.create_key(&[payee.as_str()], None, None).await.unwrap();
    let payee_key = s.with_api_key(&payee_only.secret).unwrap();
    let (status, body) = payee_key
        .post(&json!({"id": "c-x", "type": "capture", "hold": "h-1"}))
        .await
        .unwrap();
    let (_, unknown) = payee_key
        .post(&json!({"id": "c-y", "type": "capture", "hold": "no-such-hold"}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["detail"]
            .as_str()
            .map(|d| d.replace("h-1", "no-such-hold")),
        unknown["detail"].as_str().map(str::to_owned),
        "{body} / {unknown}"
    );
    let (_, batch) = payee_key
        .post_batch(&[json!({"id": "c-z", "type": "void", "hold": "h-1"})])
        .await
        .unwrap();
    assert_eq!(batch["results"][0]["status"], "invalid", "{batch}");

    let captured = settle(
        &s,
        json!({"id": "c-1", "type": "capture", "hold": "h-1", "amount": 25}),
    )
    .await;
    assert_eq!(
        (
            captured["status"].as_str(),
            captured["balance_after"].as_u64()
        ),
        (Some("applied"), Some(35)),
        "{captured}"
    );
    // What was asked, with the hold it ends.
    assert_eq!(
        (&captured["type"], &captured["hold"], &captured["amount"]),
        (&json!("capture"), &json!("h-1"), &json!(25)),
        "{captured}"
    );
    assert_eq!(captured["account"], payer, "{captured}");
    assert_eq!(funds(&s, payer).await, (35, 0, 35), "the rest released");
    assert_eq!(funds(&s, &payee).await, (65, 0, 65));
    let (_, hold) = s.get("/transactions/h-1").await.unwrap();
    assert_eq!(
        (hold["status"].as_str(), hold["captured_amount"].as_u64()),
        (Some("captured"), Some(25)),
        "{hold}"
    );
    // The payee's key sees the hold's phase (it names the payee), not why.
    let (status, seen) = payee_key.get("/transactions/h-1").await.unwrap();
    assert_eq!(
        (status, seen["status"].as_str()),
        (StatusCode::OK, Some("captured")),
        "{seen}"
    );

    // Ended: every later capture or void is refused and changes nothing.
    for (id, body) in [
        (
            "c-2",
            json!({"id": "c-2", "type": "capture", "hold": "h-1"}),
        ),
        ("v-1", json!({"id": "v-1", "type": "void", "hold": "h-1"})),
    ] {
        let late = settle(&s, body).await;
        rejected(&late, "hold_not_active");
        assert_eq!(funds(&s, payer).await, (35, 0, 35), "{id}");
    }
    // The capture again, same id and body: its first outcome.
    let (status, again) = s
        .post(&json!({"id": "c-1", "type": "capture", "hold": "h-1", "amount": 25}))
        .await
        .unwrap();
    assert_eq!(
        (status, again["status"].as_str()),
        (StatusCode::OK, Some("applied"))
    );

    // A void releases all and moves nothing; a hold may take exactly what
    // is available.
    let alone = settle(
        &s,
        json!({"id": "h-3", "type": "hold", "account": payer, "amount": 35}),
    )
    .await;
    assert_eq!(alone["status"], "held", "{alone}");
    assert_eq!(funds(&s, payer).await, (35, 35, 0));
    let voided = settle(&s, json!({"id": "v-3", "type": "void", "hold": "h-3"})).await;
    assert_eq!(voided["status"], "applied", "{voided}");
    assert_eq!(funds(&s, payer).await, (35, 0, 35));
    let (_, hold) = s.get("/transactions/h-3").await.unwrap();
    assert_eq!(hold["status"], "voided", "{hold}");
    let after_void = settle(&s, json!({"id": "c-3", "type": "capture", "hold": "h-3"})).await;
    rejected(&after_void, "hold_not_active");

    // A capture to an account that does not exist (in the payer's slot) is
    // refused and the hold stays; a capture naming no amount takes it all.
    let ghost = harness::workload::partner_in_slot(&layout, payer);
    let for_ghost = settle(
        &s,
        json!({"id": "h-5", "type": "hold", "account": payer, "to": ghost, "amount": 5}),
    )
    .await;
    assert_eq!(for_ghost["status"], "held", "{for_ghost}");
    let to_nobody = settle(&s, json!({"id": "c-5", "type": "capture", "hold": "h-5"})).await;
    rejected(&to_nobody, "unknown_account");
    assert_eq!(funds(&s, payer).await, (35, 5, 30), "the hold stays");
    let all = settle(&s, json!({"id": "v-5", "type": "void", "hold": "h-5"})).await;
    assert_eq!(all["status"], "applied", "{all}");
    assert_eq!(
        (&all["type"], &all["hold"]),
        (&json!("void"), &json!("h-5"))
    );
    let whole = settle(
        &s,
        json!({"id": "h-4", "type": "hold", "account": payer, "amount": 5}),
    )
    .await;
    assert_eq!(whole["status"], "held", "{whole}");
    let all = settle(&s, json!({"id": "c-4", "type": "capture", "hold": "h-4"})).await;
    assert_eq!(
        (all["status"].as_str(), all["balance_after"].as_u64()),
        (Some("applied"), Some(30)),
        "{all}"
    );
    let (_, hold) = s.get("/transactions/h-4").await.unwrap();
    assert_eq!(hold["captured_amount"], 5, "{hold}");
    assert_eq!(funds(&s, payer).await, (30, 0, 30));

    // No hold of that id: refused at once, nothing written.
    for body in [
        json!({"id": "c-9", "type": "capture", "hold": "never"}),
        json!({"id": "c-9", "type": "void", "hold": "d-1"}),
        json!({"id": "c-9", "type": "capture", "hold": "h-3", "account": payer}),
        json!({"id": "c-9", "type": "void", "hold": "h-3", "amount": 1}),
    ] {
        let (status, answer) = s.post(&body).await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {answer}"
        );
    }
    let (status, _) = s.get("/transactions/c-9").await.unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused request leaves no trace"
    );
    assert_eq!(funds(&s, payer).await, (30, 0, 30));
    s.stop().await.unwrap();
}

/// A hold nobody ends expires through the pipeline: the engine publishes
/// its expiry and a consumer applies it. Measured: how long after its
/// deadline it ended (the README's bound is the scan period plus the
/// consumer's lag). After it, a capture finds the hold ended.
#[rstest]
#[case::single(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_left_alone_expires_through_the_pipeline(#[case] topology: RedisTopology) {
    let mut config = isolated_config(crate::infra_of(topology), "holds-expire");
    config.expire_scan_ms = 200;
    let s = Stack::start_with(config).await.unwrap();
    s.set_balance("lapsing", 10).await.unwrap();
    let started = Instant::now();
    let held = settle(
        &s,
        json!({"id": "h-x", "type": "hold", "account": "lapsing", "amount": 7, "timeout_s": 1}),
    )
    .await;
    assert_eq!(held["status"], "held", "{held}");
    let ended = loop {
        let (_, hold) = s.get("/transactions/h-x").await.unwrap();
        if hold["status"] != "held" {
            break hold;
        }
        assert!(
            started.elapsed() < SETTLE,
            "the hold did not expire within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ended["status"], "expired", "{ended}");
    // Both times are Redis's clock: the deadline set by the hold's apply,
    // the end by the expiry's.
    let store = crate::isolated_store_on(crate::infra_of(topology), &s.config.namespace).await;
    let record = store
        .hold_record(
            &txengine::domain::AccountId::parse("lapsing").unwrap(),
            &txengine::domain::TxId::parse("h-x").unwrap(),
        )
        .await
        .unwrap()
        .expect("the hold is kept after it ended");
    let (deadline, ended_ms) = (record.deadline_ms.unwrap(), record.ended_ms.unwrap());
    assert!(
        ended_ms >= deadline,
        "{record:?}: ended before its deadline"
    );
    println!(
        "{topology:?}: a hold of 1 s expired {} ms after its deadline (scan every 200 ms)",
        ended_ms - deadline
    );
    assert_eq!(funds(&s, "lapsing").await, (10, 0, 10));
    let late_capture = settle(&s, json!({"id": "c-x", "type": "capture", "hold": "h-x"})).await;
    rejected(&late_capture, "hold_not_active");
    assert_eq!(funds(&s, "lapsing").await, (10, 0, 10));
    s.stop().await.unwrap();
}

/// A capture, a void and the expiry of one hold, all sent at its deadline
/// for many holds: each hold ends exactly once (one of the three wins, the
/// others find it ended), and the money adds up to what the winners did.
#[rstest]
#[case::single(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn capture_void_and_expiry_race_and_exactly_one_wins(#[case] topology: RedisTopology) {
    const HOLDS: usize = 20;
    let mut config = isolated_config(crate::infra_of(topology), "holds-race");
    config.expire_scan_ms = 100;
    let s = Stack::start_with(config).await.unwrap();
    let layout = Layout::new(&s.config.namespace, topology);
    let to = elsewhere(&layout, "racer", "racer-to-");
    s.set_balance("racer", 1_000).await.unwrap();
    s.set_balance(&to, 0).await.unwrap();
    let holds: Vec<String> = (0..HOLDS).map(|i| format!("h-{i}")).collect();
    futures::future::join_all(holds.iter().map(|id| {
        let body = json!({"id": id, "type": "hold", "account": "racer", "to": to,
                          "amount": 10, "timeout_s": 2});
        let s = &s;
        async move {
            let (status, answer) = s.post(&body).await.unwrap();
            assert_eq!(status, StatusCode::ACCEPTED, "{body} -> {answer}");
        }
    }))
    .await;
    let held_at = Instant::now();
    for (id, held) in s.wait_settled(&holds, SETTLE).await.unwrap() {
        assert_eq!(held["status"], "held", "{id}: {held}");
    }
    // The first half's capture and void race each other; the second half's
    // go at about the deadline, and race the expiry too.
    let sends = |range: std::ops::Range<usize>| {
        let s = &s;
        futures::future::join_all(range.flat_map(|i| {
            [
                json!({"id": format!("c-{i}"), "type": "capture", "hold": format!("h-{i}"), "amount": 4}),
                json!({"id": format!("v-{i}"), "type": "void", "hold": format!("h-{i}")}),
            ]
            .map(|body| async move {
                let (status, answer) = s.post(&body).await.unwrap();
                assert_eq!(status, StatusCode::ACCEPTED, "{body} -> {answer}");
            })
        }))
    };
    sends(0..HOLDS / 2).await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(held_at.elapsed())).await;
    sends(HOLDS / 2..HOLDS).await;
    let ids: Vec<String> = (0..HOLDS)
        .flat_map(|i| [format!("c-{i}"), format!("v-{i}")])
        .collect();
    let outcomes = s.wait_settled(&ids, SETTLE).await.unwrap();
    // Every hold ends: wait out the expiries.
    let started = Instant::now();
    let mut phases = Vec::new();
    for i in 0..HOLDS {
        let phase = loop {
            let (_, hold) = s.get(&format!("/transactions/h-{i}")).await.unwrap();
            if !matches!(hold["status"].as_str(), Some("held" | "capturing")) {
                break hold;
            }
            assert!(started.elapsed() < SETTLE, "h-{i} never ended: {hold}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        phases.push(phase);
    }
    let mut captured = 0;
    let mut wins = [0; 3];
    for (i, phase) in phases.iter().enumerate() {
        let capture = &outcomes[&format!("c-{i}")];
        let void = &outcomes[&format!("v-{i}")];
        let applied = |view: &Value| view["status"] == "applied";
        let winner = match phase["status"].as_str() {
            Some("captured") => 0,
            Some("voided") => 1,
            Some("expired") => 2,
            other => panic!("h-{i} ended as {other:?}: {phase}"),
        };
        wins[winner] += 1;
        assert_eq!(
            (applied(capture), applied(void)),
            (winner == 0, winner == 1),
            "h-{i} {phase}: exactly its winner applied: capture {capture}, void {void}"
        );
        for loser in [capture, void].into_iter().filter(|view| !applied(view)) {
            rejected(loser, "hold_not_active");
        }
        if winner == 0 {
            captured += 4;
        }
    }
    println!("capture/void/expiry wins: {wins:?}");
    assert_eq!(
        funds(&s, "racer").await,
        (1_000 - captured, 0, 1_000 - captured)
    );
    assert_eq!(funds(&s, &to).await.0, captured);
    s.stop().await.unwrap();
}

/// The hold script at the edges the pipeline seldom reaches, applied
/// straight through the store: a redelivered capture answers its first
/// outcome and changes nothing; an expiry before the deadline, or of an
/// ended hold, changes nothing; a capture after the deadline (before any
/// expiry came) finds the hold expired; a capture of a hold never applied
/// is `unknown_hold`; a hold on an unknown account is refused and its
/// capture finds it not active.
#[tokio::test(flavor = "multi_thread")]
async fn the_hold_script_at_its_edges() {
    use txengine::domain::{AccountId, Amount, Movement, Outcome, RejectReason, Transaction, TxId};
    use txengine::store::{Applied, Progress};
    use txengine::wire::Record;

    let namespace = format!("hold-edges-{}", uuid::Uuid::new_v4().simple());
    let store = crate::isolated_store(&namespace, &crate::infra().redis_url).await;
    let account = AccountId::parse("edge").unwrap();
    store
        .set_balance(&account, txengine::domain::Balance::new(100).unwrap())
        .await
        .unwrap()
        .ensure_set()
        .unwrap();
    let amount = |n| Amount::new(n).unwrap();
    let id = |raw: &str| TxId::parse(raw).unwrap();
    let record = |tx_id: &str, movement| Record {
        tx: Transaction {
            asset: None,
            metadata: Default::default(),
            id: id(tx_id),
            movement,
        },
        accepted_at_ms: 1,
        saga: None,
    };
    let hold = |tx_id: &str, on: &AccountId, timeout_s| {
        record(
            tx_id,
            Movement::Hold {
                account: on.clone(),
                to: None,
                amount: amount(10),
                timeout_s,
            },
        )
    };
    let capture = |tx_id: &str, of: &str, n| {
        record(
            tx_id,
            Movement::Capture {
                hold: id(of),
                account: account.clone(),
                to: None,
                amount: amount(n),
            },
        )
    };
    let expire = |of: &str| {
        record(
            of,
            Movement::Expire {
                hold: id(of),
                account: account.clone(),
                amount: amount(10),
            },
        )
    };
    let apply = |record: Record| {
        let store = &store;
        async move {
            let mut progress = store.apply_records(&[record]).await.unwrap();
            progress.pop().unwrap()
        }
    };
    let ended = |outcome| Progress::Ended {
        applied: Applied {
            outcome,
            duplicate: false,
        },
        recorded: true,
        asset: Some(Default::default()),
        posting_assets: Vec::new(),
    };
    let funds = || async { store.account(&account).await.unwrap().unwrap() };

    // A hold of 60 s: an early expiry changes nothing.
    assert!(matches!(
        apply(hold("e-1", &account, 60)).await,
        Progress::Ended { .. }
    ));
    assert_eq!(
        apply(expire("e-1")).await,
        Progress::Expiry {
            expired: false,
            duplicate: true
        }
    );
    assert_eq!(funds().await.pending, 10, "still held");
    // A capture, then the same record again: the first outcome, once.
    let first = apply(capture("c-1", "e-1", 4)).await;
    assert_eq!(
        first,
        ended(Outcome::Applied {
            balance_after: txengine::domain::Balance::new(96).unwrap()
        })
    );
    let again = apply(capture("c-1", "e-1", 4)).await;
    let Progress::Ended { applied, .. } = again else {
        panic!("{again:?}")
    };
    assert_eq!(
        (applied.outcome, applied.duplicate),
        (first_outcome(&first), true)
    );
    assert_eq!(
        (funds().await.balance.minor_units(), funds().await.pending),
        (96, 0)
    );
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pending: Option<String> = redis::cmd("HGET")
        .arg(store.layout().account("edge"))
        .arg("pending")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        pending.as_deref(),
        Some("0"),
        "the record keeps pending at 0"
    );
    // An expiry of an ended hold changes nothing.
    assert_eq!(
        apply(expire("e-1")).await,
        Progress::Expiry {
            expired: false,
            duplicate: true
        }
    );
    assert_eq!(
        (funds().await.balance.minor_units(), funds().await.pending),
        (96, 0)
    );

    // Past its deadline, before any expiry: a capture finds it expired.
    assert!(matches!(
        apply(hold("e-2", &account, 1)).await,
        Progress::Ended { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        apply(capture("c-2", "e-2", 1)).await,
        ended(Outcome::rejected(RejectReason::HoldNotActive))
    );
    let kept = store
        .hold_record(&account, &id("e-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.state, "expired", "{kept:?}");
    assert_eq!(
        (funds().await.balance.minor_units(), funds().await.pending),
        (96, 0)
    );
    // Its member is due again at once, so the expirer publishes its
    // expiry, whose apply changes nothing but says it expired (the event).
    let layout = store.layout();
    let due = || {
        let mut cmd = redis::cmd("ZSCORE");
        cmd.arg(layout.holds_due(layout.shard_of(account.as_str())))
            .arg(Layout::due_member(account.as_str(), "e-2"));
        cmd
    };
    let score: Option<u64> = due().query_async(&mut conn).await.unwrap();
    assert!(
        score.is_some(),
        "the late-expired hold is due for its expiry"
    );
    let expirer_sees =
        |due: Vec<txengine::store::DueHold>| due.iter().any(|d| d.hold.as_str() == "e-2");
    let now = txengine::wire::now_ms();
    assert!(
        expirer_sees(store.due_holds(now, 1000).await.unwrap()),
        "the expirer publishes its expiry"
    );
    assert_eq!(
        apply(expire("e-2")).await,
        Progress::Expiry {
            expired: true,
            duplicate: true
        }
    );
    let score: Option<u64> = due().query_async(&mut conn).await.unwrap();
    assert_eq!(score, None, "its expiry removed the member");
    assert!(!expirer_sees(store.due_holds(now, 1000).await.unwrap()));
    assert_eq!(
        (funds().await.balance.minor_units(), funds().await.pending),
        (96, 0)
    );

    // Never applied: unknown. On an unknown account: refused, then not active.
    assert_eq!(
        apply(capture("c-3", "never", 1)).await,
        ended(Outcome::rejected(RejectReason::UnknownHold))
    );
    let ghost = AccountId::parse("ghost").unwrap();
    // No account, so no asset to name.
    let on_no_account = |outcome| match ended(outcome) {
        Progress::Ended {
            applied, recorded, ..
        } => Progress::Ended {
            applied,
            recorded,
            asset: None,
            posting_assets: Vec::new(),
        },
        other => other,
    };
    assert_eq!(
        apply(hold("e-4", &ghost, 60)).await,
        on_no_account(Outcome::rejected(RejectReason::UnknownAccount))
    );
    let of_ghost = record(
        "v-4",
        Movement::Void {
            hold: id("e-4"),
            account: ghost.clone(),
            amount: amount(10),
        },
    );
    assert_eq!(
        apply(of_ghost).await,
        on_no_account(Outcome::rejected(RejectReason::HoldNotActive))
    );

    // Balance below what a hold keeps (only a foreign write can do it): the
    // capture stops with an error before any write.
    assert!(matches!(
        apply(hold("e-7", &account, 60)).await,
        Progress::Ended { .. }
    ));
    let account_key = store.layout().account("edge");
    let _: () = redis::cmd("HSET")
        .arg(&account_key)
        .arg("balance")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = store.apply_records(&[capture("c-7", "e-7", 10)]).await;
    assert!(refused.is_err(), "{refused:?}");
    let kept = store
        .hold_record(&account, &id("e-7"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.state, "held", "nothing written: {kept:?}");
    let pending: Option<u64> = redis::cmd("HGET")
        .arg(&account_key)
        .arg("pending")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, Some(10));
    let _: () = redis::cmd("HSET")
        .arg(&account_key)
        .arg("balance")
        .arg(96)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        apply(capture("c-8", "e-7", 10)).await,
        Progress::Ended { .. }
    ));

    // An id reused once its hold ended and its flag expired (here: deleted)
    // holds anew; the ended hold's record is not in the way.
    let _: () = redis::cmd("DEL")
        .arg(store.layout().apply_flag("e-1", "edge"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        apply(hold("e-1", &account, 60)).await,
        Progress::Ended { .. }
    ));
    let anew = store
        .hold_record(&account, &id("e-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (anew.state.as_str(), anew.captured),
        ("held", None),
        "{anew:?}"
    );
}

/// A capture to `to` in its slot credits `to` as a transfer would: never
/// past 2^53-1, leaving room for the money in flight out of `to` (here
/// written by hand: on one Redis no saga holds any). Refused, it changes
/// nothing: the hold stays held, with all it keeps.
#[tokio::test(flavor = "multi_thread")]
async fn a_capture_leaves_its_destination_room_for_what_is_in_flight() {
    use txengine::domain::{AccountId, Amount, Balance, Movement, Outcome, RejectReason};
    use txengine::domain::{Transaction, TxId};
    use txengine::limits::MAX_MINOR_UNITS;
    use txengine::store::{Applied, Progress};
    use txengine::wire::Record;

    let namespace = format!("hold-room-{}", uuid::Uuid::new_v4().simple());
    let store = crate::isolated_store(&namespace, &crate::infra().redis_url).await;
    let (payer, full) = (
        AccountId::parse("payer").unwrap(),
        AccountId::parse("full").unwrap(),
    );
    for (account, balance) in [(&payer, 100), (&full, MAX_MINOR_UNITS - 20)] {
        let balance = Balance::new(balance as i64).unwrap();
        store
            .set_balance(account, balance)
            .await
            .unwrap()
            .ensure_set()
            .unwrap();
    }
    let record = |id: &str, movement| Record {
        tx: Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse(id).unwrap(),
            movement,
        },
        accepted_at_ms: 1,
        saga: None,
    };
    let hold = record(
        "r-1",
        Movement::Hold {
            account: payer.clone(),
            to: Some(full.clone()),
            amount: Amount::new(10).unwrap(),
            timeout_s: 60,
        },
    );
    let capture = |id: &str| {
        record(
            id,
            Movement::Capture {
                hold: TxId::parse("r-1").unwrap(),
                account: payer.clone(),
                to: Some(full.clone()),
                amount: Amount::new(10).unwrap(),
            },
        )
    };
    store.apply_records(&[hold]).await.unwrap();
    // 10 fits below 2^53-1 (20 left), but not with 15 in flight out of `to`.
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let record = store.layout().account("full");
    let _: () = redis::cmd("HSET")
        .arg(&record)
        .arg("held")
        .arg(15)
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = store.apply_records(&[capture("c-1")]).await.unwrap();
    let overflow = Outcome::rejected(RejectReason::BalanceOverflow);
    assert!(
        matches!(refused[..], [Progress::Ended { applied: Applied { outcome, .. }, .. }] if outcome == overflow),
        "{refused:?}"
    );
    let funds = store.account(&payer).await.unwrap().unwrap();
    assert_eq!((funds.balance.minor_units(), funds.pending), (100, 10));
    let to = store.account(&full).await.unwrap().unwrap();
    assert_eq!(to.balance.minor_units(), MAX_MINOR_UNITS as i64 - 20);
    // With the money in flight back, the same capture fits.
    let _: () = redis::cmd("HDEL")
        .arg(&record)
        .arg("held")
        .query_async(&mut conn)
        .await
        .unwrap();
    let captured = store.apply_records(&[capture("c-2")]).await.unwrap();
    assert!(
        matches!(
            captured[..],
            [Progress::Ended {
                applied: Applied {
                    outcome: Outcome::Applied { .. },
                    ..
                },
                ..
            }]
        ),
        "{captured:?}"
    );
    let to = store.account(&full).await.unwrap().unwrap();
    assert_eq!(to.balance.minor_units(), MAX_MINOR_UNITS as i64 - 10);
}

/// On a Redis Cluster, the settle of a capture's saga ends only a hold
/// that its capture left `capturing`: a hold in any other state (only a
/// foreign write can do that) stops it with an error, nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn a_capture_saga_settles_only_a_capturing_hold() {
    use txengine::domain::{AccountId, Amount, Balance, Movement, Transaction, TxId};
    use txengine::store::{Connection, Progress};
    use txengine::wire::{Record, SagaStep};

    let infra = Infra::shared_cluster();
    let namespace = format!("hold-saga-{}", uuid::Uuid::new_v4().simple());
    let store = crate::isolated_store_on(infra, &namespace).await;
    let layout = store.layout().clone();
    let payee = elsewhere(&layout, "saga-payer", "saga-payee-");
    let (payer, payee) = (
        AccountId::parse("saga-payer").unwrap(),
        AccountId::parse(&payee).unwrap(),
    );
    for account in [&payer, &payee] {
        store
            .set_balance(account, Balance::new(100).unwrap())
            .await
            .unwrap()
            .ensure_set()
            .unwrap();
    }
    let amount = Amount::new(10).unwrap();
    let record = |id: &str, movement| Record {
        tx: Transaction {
            asset: None,
            metadata: Default::default(),
            id: TxId::parse(id).unwrap(),
            movement,
        },
        accepted_at_ms: 1,
        saga: None,
    };
    let hold = record(
        "s-h",
        Movement::Hold {
            account: payer.clone(),
            to: Some(payee.clone()),
            amount,
            timeout_s: 60,
        },
    );
    store.apply_records(&[hold]).await.unwrap();
    let capture = record(
        "s-c",
        Movement::Capture {
            hold: TxId::parse("s-h").unwrap(),
            account: payer.clone(),
            to: Some(payee.clone()),
            amount,
        },
    );
    let Progress::Next(credit) = store.apply_records(&[capture]).await.unwrap().remove(0) else {
        panic!("a capture to another slot goes on as a saga")
    };
    let Progress::Next(settle) = store.apply_records(&[credit]).await.unwrap().remove(0) else {
        panic!("the credit lands and the settle follows")
    };
    assert!(matches!(
        settle.saga,
        Some(SagaStep::Settle { refused: None, .. })
    ));
    // A foreign write puts the hold back to `held`.
    let conn = Connection::open(
        &infra.redis_url,
        RedisTopology::Cluster,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut hset = redis::cmd("HSET");
    hset.arg(layout.hold(payer.as_str(), "s-h"))
        .arg("state")
        .arg("held");
    let _: Vec<i64> = conn
        .run_by_slot(vec![(layout.shard_of(payer.as_str()), hset)])
        .await
        .unwrap();
    let refused = store.apply_records(std::slice::from_ref(&settle)).await;
    assert!(refused.is_err(), "{refused:?}");
    let mut get = redis::cmd("HGET");
    get.arg(layout.account(payer.as_str())).arg("held");
    let held: Vec<Option<u64>> = conn
        .run_by_slot(vec![(layout.shard_of(payer.as_str()), get)])
        .await
        .unwrap();
    assert_eq!(
        held,
        [Some(10)],
        "nothing written: the money is still in flight"
    );
}

fn first_outcome(progress: &txengine::store::Progress) -> txengine::domain::Outcome {
    match progress {
        txengine::store::Progress::Ended { applied, .. } => applied.outcome,
        other => panic!("{other:?}"),
    }
}
