//! The local provider's Redis Cluster (the ground for accounts spread over
//! slots): 3 masters and 3 replicas on loopback ports, every slot served; a
//! master killed with -9 is replaced by its replica within seconds, with
//! what was written to it and acknowledged by `WAIT`; no node left running
//! once the cluster is dropped.

use std::time::{Duration, Instant};

use harness::infra::{LocalRedisCluster, LocalService};
use harness::stack::{isolated_config, Stack};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::json;
use txengine::config::RedisTopology;

fn connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap()
}

#[test]
fn local_cluster_forms_fails_over_and_cleans_up() {
    let mut cluster = LocalRedisCluster::start(3, 1, "always").expect("a local cluster forms");
    assert_eq!(cluster.nodes.len(), 6);
    let pids: Vec<u32> = cluster.nodes.iter_mut().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 6);

    let key = "acct-1";
    let slot = cluster.slot_of(key).unwrap();
    let master = cluster.master_of(slot).unwrap();
    let mut conn = connection(&cluster.nodes[master].url());
    let _: () = redis::cmd("SET").arg(key).arg(42).query(&mut conn).unwrap();
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(replicas, 1, "the write reached the master's replica");

    cluster.nodes[master].kill();
    let started = Instant::now();
    let promoted = loop {
        match cluster.master_of(slot) {
            Ok(node) if node != master => break node,
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no replica took over slot {slot}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    cluster.wait_healthy().unwrap();
    eprintln!(
        "replica promoted after {:?} (node timeout {} ms)",
        started.elapsed(),
        harness::infra::local::CLUSTER_NODE_TIMEOUT_MS
    );
    let value: Option<i64> = redis::cmd("GET")
        .arg(key)
        .query(&mut connection(&cluster.nodes[promoted].url()))
        .unwrap();
    assert_eq!(
        value,
        Some(42),
        "the acknowledged write survived the failover"
    );

    drop(cluster);
    for pid in pids {
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "redis-server {pid} still runs after the cluster was dropped"
        );
    }
}

/// A local cluster of the test's own (its nodes get killed) and the engine
/// on it with `--redis-topology cluster --redis-wait-replicas 1`.
async fn engine_on_a_cluster_of_its_own(name: &str) -> (LocalRedisCluster, Stack) {
    let cluster = tokio::task::spawn_blocking(|| LocalRedisCluster::start(3, 1, "always"))
        .await
        .unwrap()
        .expect("a local cluster forms");
    let mut config = isolated_config(crate::infra(), name);
    config.redis_topology = RedisTopology::Cluster;
    config.redis_url = cluster.urls().join(",");
    config.redis_wait_replicas = Some(1);
    (cluster, Stack::start_with(config).await.unwrap())
}

/// The first id `<prefix>-<n>` whose tx record is not on `master`.
fn id_on_another_master(
    cluster: &LocalRedisCluster,
    layout: &txengine::store::Layout,
    master: usize,
    prefix: &str,
) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| {
            cluster
                .master_of(cluster.slot_of(&layout.tx(id)).unwrap())
                .unwrap()
                != master
        })
        .unwrap()
}

/// A claim is on its replica before its record is published: with the
/// replica of the master that holds the id's record down, the request is a
/// 503 and nothing is published (a failover then could lose the binding,
/// and another body would be bound and accepted too); once the replica is
/// back, the same request is accepted and applied once, and the binding
/// holds against another body.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_waits_for_its_replica() {
    let (mut cluster, s) = engine_on_a_cluster_of_its_own("claimwait").await;
    s.set_balance("a", 100).await.unwrap();
    let layout = txengine::store::Layout::new(&s.config.namespace, RedisTopology::Cluster);
    let id = "unreplicated";
    let master = cluster
        .master_of(cluster.slot_of(&layout.tx(id)).unwrap())
        .unwrap();
    let replica = cluster.replica_of(master).unwrap();
    cluster.nodes[replica].kill();
    let body = json!({"id": id, "account": "a", "amount": 1});
    let (status, problem) = s.post(&body).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    let (status, _) = s.get(&format!("/transactions/{id}")).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing accepted");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.nodes[replica].restart().unwrap();
        cluster
    })
    .await
    .unwrap();
    post_until_accepted(&s, &body).await;
    let settled = s
        .wait_settled(&[id.to_owned()], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(settled[id]["balance_after"], 99, "{settled:?}");
    let (status, answer) = s
        .post(&json!({"id": id, "account": "a", "amount": 2}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    s.wait_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.balance("a").await.unwrap(), Some(99));
    s.stop().await.unwrap();
    drop(cluster);
}

/// POSTs `body` until it is accepted (202/200), retrying 503s while the
/// cluster fails over.
async fn post_until_accepted(s: &Stack, body: &serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = s.post(body).await.unwrap();
        if status == StatusCode::ACCEPTED || status == StatusCode::OK {
            return;
        }
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline,
            "{status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The engine on a Redis Cluster (`--redis-topology cluster`, seeds in
/// `--redis-url`, `--redis-wait-replicas 1`): transfers apply; the master
/// of the source's slot is killed with -9; the replica takes over, the
/// scripts are loaded into it again (its script cache is empty); once the
/// old master is back as its replica, every transfer, before and after the
/// failover, is applied exactly once and the group's lag drains.
#[tokio::test(flavor = "multi_thread")]
async fn engine_runs_on_a_cluster_through_a_master_failover() {
    let (mut cluster, s) = engine_on_a_cluster_of_its_own("cluster").await;
    s.set_balance("a", 1_000).await.unwrap();
    s.set_balance("b", 0).await.unwrap();
    let transfer = |i: usize| json!({"id": format!("t-{i}"), "type": "transfer", "account": "a", "to": "b", "amount": 10});
    for i in 0..20 {
        post_until_accepted(&s, &transfer(i)).await;
    }
    let ids = |range: std::ops::Range<usize>| range.map(|i| format!("t-{i}")).collect::<Vec<_>>();
    s.wait_settled(&ids(0..20), Duration::from_secs(30))
        .await
        .unwrap();

    // The master of the source's slot. No fence before the kill: the
    // consumer stored offsets only for batches a replica acknowledged.
    let layout = txengine::store::Layout::new(&s.config.namespace, RedisTopology::Cluster);
    let slot = cluster.slot_of(&layout.account("a")).unwrap();
    let master = cluster.master_of(slot).unwrap();
    cluster.nodes[master].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.master_of(slot).ok() == Some(master) || cluster.master_of(slot).is_err() {
        assert!(Instant::now() < deadline, "no replica took over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The promoted replica has no replica of its own: the consumer holds
    // its offsets back, and a claim on its shard is refused (503, it could
    // not reach a replica), until the old master returns as its replica.
    let posting = async {
        for i in 20..40 {
            post_until_accepted(&s, &transfer(i)).await;
        }
    };
    let restart = tokio::task::spawn_blocking(move || {
        cluster.nodes[master].restart().unwrap();
        cluster
    });
    let ((), cluster) = tokio::join!(posting, restart);
    let cluster = cluster.unwrap();
    let settled = s
        .wait_settled(&ids(0..40), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        settled.values().all(|v| v["status"] == "applied"),
        "{settled:?}"
    );
    s.wait_drained(Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.balance("a").await.unwrap(), Some(600));
    assert_eq!(s.balance("b").await.unwrap(), Some(400));
    s.stop().await.unwrap();
    drop(cluster);
}

/// With `--redis-wait-replicas 1`, a batch whose writes cannot reach a
/// replica (the replica is killed) is applied but its offsets are held
/// back, shown by `/ready`; once the replica is back, they are stored and
/// the group's lag drains.
#[tokio::test(flavor = "multi_thread")]
async fn offsets_wait_for_a_replica() {
    let infra = crate::infra();
    let (mut cluster, s) = engine_on_a_cluster_of_its_own("waitrepl").await;
    s.set_balance("a", 100).await.unwrap();
    post_until_accepted(&s, &json!({"id": "before", "account": "a", "amount": 1})).await;
    s.wait_settled(&["before".into()], Duration::from_secs(30))
        .await
        .unwrap();

    let layout = txengine::store::Layout::new(&s.config.namespace, RedisTopology::Cluster);
    let slot = cluster.slot_of(&layout.account("a")).unwrap();
    let master = cluster.master_of(slot).unwrap();
    let replica = cluster.replica_of(master).unwrap();
    cluster.nodes[replica].kill();
    // Its claim on a master whose replica is up: only its apply waits.
    let held = id_on_another_master(&cluster, &layout, master, "held");
    post_until_accepted(&s, &json!({"id": held, "account": "a", "amount": 2})).await;
    s.wait_settled(std::slice::from_ref(&held), Duration::from_secs(30))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = s.get_as_admin("/ready").await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE
            && body["stalled"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("replicas"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no stall shown: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lag =
        harness::measure::consumer_lag(&infra.kafka_brokers, &s.config.group, &s.config.topic)
            .unwrap();
    assert!(lag > 0, "the offset moved past writes no replica has");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.nodes[replica].restart().unwrap();
        cluster
    })
    .await
    .unwrap();
    s.wait_drained(Duration::from_secs(60)).await.unwrap();
    let (status, body) = s.get("/ready").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    s.stop().await.unwrap();
    drop(cluster);
}
