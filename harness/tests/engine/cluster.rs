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
    let mut cluster = LocalRedisCluster::start(3, "always").expect("a local cluster forms");
    assert_eq!(cluster.nodes.len(), 6);
    let pids: Vec<u32> = cluster.nodes.iter_mut().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 6);

    let key = "acct-1";
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut connection(&cluster.nodes[0].url()))
        .unwrap();
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
/// `--redis-url`): transfers apply; the master of the namespace's slot is
/// killed with -9 once its writes reached the replica; the replica takes
/// over, the scripts are loaded into it again (its script cache is empty),
/// and the transfers after the failover apply exactly once as well.
#[tokio::test(flavor = "multi_thread")]
async fn engine_runs_on_a_cluster_through_a_master_failover() {
    let infra = crate::infra();
    let mut cluster = tokio::task::spawn_blocking(|| LocalRedisCluster::start(3, "always"))
        .await
        .unwrap()
        .expect("a local cluster forms");
    let mut config = isolated_config(infra, "cluster");
    config.redis_topology = RedisTopology::Cluster;
    config.redis_url = cluster.urls().join(",");
    let s = Stack::start_with(config).await.unwrap();
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

    // Every key of the namespace is in one slot; fence the master's
    // replication stream (a write of ours, then WAIT) before the kill, so
    // that what the engine wrote is on the replica.
    let fence = format!("{{{}}}:fence", s.config.namespace);
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&fence)
        .query(&mut connection(&cluster.nodes[0].url()))
        .unwrap();
    let master = cluster.master_of(slot).unwrap();
    let mut conn = connection(&cluster.nodes[master].url());
    let _: () = redis::cmd("SET")
        .arg(&fence)
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(replicas, 1);
    cluster.nodes[master].kill();

    for i in 20..40 {
        post_until_accepted(&s, &transfer(i)).await;
    }
    let settled = s
        .wait_settled(&ids(0..40), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        settled.values().all(|v| v["status"] == "applied"),
        "{settled:?}"
    );
    assert_ne!(
        cluster.master_of(slot).unwrap(),
        master,
        "a replica took over"
    );
    assert_eq!(s.balance("a").await.unwrap(), Some(600));
    assert_eq!(s.balance("b").await.unwrap(), Some(400));
    s.stop().await.unwrap();
    drop(cluster);
}
