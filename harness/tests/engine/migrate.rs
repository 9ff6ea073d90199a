//! An engine started on data of an earlier key layout moves it to this one
//! before it serves anything, and refuses data of a newer layout.

use std::time::Duration;

use harness::stack::{isolated_config, Stack};
use reqwest::StatusCode;
use rstest::rstest;
use txengine::store::{Connection, Layout, RedisTopology, LAYOUT_VERSION};

/// Runs `commands` (each in the slot of its account) on `topology`'s Redis;
/// their answers, in order.
async fn run<T: redis::FromRedisValue>(
    topology: RedisTopology,
    commands: Vec<(String, redis::Cmd)>,
) -> Vec<T> {
    let infra = crate::infra_of(topology);
    let conn = Connection::open(&infra.redis_url, topology, Duration::from_secs(5))
        .await
        .unwrap();
    let layout = Layout::new("any", topology);
    let commands = commands
        .into_iter()
        .map(|(account, cmd)| (layout.shard_of(&account), cmd))
        .collect();
    conn.run_by_slot(commands).await.unwrap()
}

/// Layout 1 kept an account in three keys: a balance, what its holds keep
/// and what is in flight out of it. Started on such data, the engine
/// serves each account as it was (balance, pending, available), leaves
/// none of the old keys, records the layout, and a second start moves
/// nothing again.
#[rstest]
#[case::one_redis(RedisTopology::Single)]
#[case::cluster(RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_moves_accounts_of_layout_1_into_records(#[case] topology: RedisTopology) {
    let config = isolated_config(crate::infra_of(topology), "migrate");
    let layout = Layout::new(&config.namespace, topology);
    let accounts = [
        ("m-a", 100, None, None),
        ("m-b", 50, Some(20), None),
        ("m-c", 7, None, Some(3)),
    ];
    let mut writes = Vec::new();
    for (account, balance, pending, held) in accounts {
        let [balance_key, pending_key, held_key] = layout.legacy_account(account);
        let mut set = redis::cmd("SET");
        set.arg(&balance_key).arg(balance);
        writes.push((account.to_owned(), set));
        for (key, value) in [(pending_key, pending), (held_key, held)] {
            if let Some(value) = value {
                let mut set = redis::cmd("SET");
                set.arg(key).arg(value);
                writes.push((account.to_owned(), set));
            }
        }
    }
    // And one account of layout 2: a record without an asset.
    let mut record = redis::cmd("HSET");
    record
        .arg(layout.account("m-d"))
        .arg(&["balance", "9", "pending", "0"]);
    writes.push(("m-d".to_owned(), record));
    let _: Vec<redis::Value> = run(topology, writes).await;

    let s = Stack::start_with(config.clone()).await.unwrap();
    for (account, balance, pending, _) in accounts {
        let (status, body) = s.get(&format!("/balance/{account}")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        let pending = pending.unwrap_or(0);
        assert_eq!(
            (
                body["balance"].as_u64(),
                body["pending"].as_u64(),
                body["available"].as_u64()
            ),
            (Some(balance), Some(pending), Some(balance - pending)),
            "{account}: {body}"
        );
        assert_eq!(
            body["asset"],
            config.default_asset.as_str(),
            "an account moved holds the default asset"
        );
    }
    let (status, body) = s.get("/accounts/m-d").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["balance"], &body["asset"]),
        (
            &serde_json::json!(9),
            &serde_json::json!(config.default_asset.as_str())
        ),
        "a record of layout 2 keeps its money and gains the default asset"
    );
    let mut reads = Vec::new();
    for (account, ..) in accounts {
        for key in layout.legacy_account(account) {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(key);
            reads.push((account.to_owned(), exists));
        }
        let mut held = redis::cmd("HGET");
        held.arg(layout.account(account)).arg("held");
        reads.push((account.to_owned(), held));
    }
    let answers: Vec<Option<u64>> = run(topology, reads).await;
    assert_eq!(
        answers,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3].map(Some),
        "no old key is left; what was in flight is in the record"
    );
    // A debit on a moved account takes only what holds do not keep.
    let (status, body) = s
        .post(&serde_json::json!({"id": "m-1", "account": "m-b", "amount": 31}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let settled = s
        .wait_settled(&["m-1".to_owned()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        (
            settled["m-1"]["status"].as_str(),
            settled["m-1"]["reason"].as_str()
        ),
        (Some("rejected"), Some("insufficient_funds")),
        "{settled:?}"
    );
    s.stop().await.unwrap();

    let store = crate::isolated_store_on(crate::infra_of(topology), &config.namespace).await;
    assert_eq!(store.migrate().await.unwrap(), 0, "nothing moves twice");
}

/// A store whose recorded layout is newer than this build's is refused at
/// start, with a message that says so; nothing is served.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_refuses_data_of_a_newer_layout() {
    let config = isolated_config(crate::infra(), "newer");
    let layout = Layout::new(&config.namespace, RedisTopology::Single);
    let mut set = redis::cmd("SET");
    set.arg(layout.version()).arg(LAYOUT_VERSION + 1);
    let _: Vec<redis::Value> = run(RedisTopology::Single, vec![("any".to_owned(), set)]).await;
    let refused = Stack::start_with(config).await.err().expect("refused");
    let message = format!("{refused:#}");
    assert!(message.contains("newer txengine"), "{message}");
}

/// An account moved already (by another engine starting at the same time)
/// is left as it is: the script writes nothing. One in layout 2 (a record
/// without an asset) keeps its money and gains the default asset and a
/// creation time, once.
#[tokio::test]
async fn an_account_moved_already_is_left_as_it_is() {
    let layout = Layout::new("migrate-twice", RedisTopology::Single);
    let client = redis::Client::open(crate::infra().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let record = layout.account("moved");
    let _: () = redis::cmd("HSET")
        .arg(&record)
        .arg(&["balance", "5", "pending", "2"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let [balance, pending, held] = layout.legacy_account("moved");
    let mut runs = Vec::new();
    for now_ms in [1_000, 2_000] {
        let changed: i64 = redis::cmd("EVAL")
            .arg(txengine::store::Store::script_source("migrate_account").unwrap())
            .arg(4)
            .arg(&[&balance, &pending, &held, &record])
            .arg("USD/2")
            .arg(now_ms)
            .query_async(&mut conn)
            .await
            .unwrap();
        let fields: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&record)
            .query_async(&mut conn)
            .await
            .unwrap();
        runs.push((changed, fields));
    }
    let completed: std::collections::BTreeMap<String, String> = [
        ("balance", "5"),
        ("pending", "2"),
        ("asset", "USD/2"),
        ("created", "1000"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    assert_eq!(runs[0], (1, completed.clone()), "layout 2 completed");
    assert_eq!(runs[1], (0, completed), "then left as it is");
    // An account that is not there (moved and gone) is not made.
    let ghost = layout.account("ghost");
    let [balance, pending, held] = layout.legacy_account("ghost");
    let changed: i64 = redis::cmd("EVAL")
        .arg(txengine::store::Store::script_source("migrate_account").unwrap())
        .arg(4)
        .arg(&[&balance, &pending, &held, &ghost])
        .arg("USD/2")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&ghost)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((changed, exists), (0, 0));
}
