//! The local provider's Redis Cluster (the ground for accounts spread over
//! slots): 3 masters and 3 replicas on loopback ports, every slot served; a
//! master killed with -9 is replaced by its replica within seconds, with
//! what was written to it and acknowledged by `WAIT`; no node left running
//! once the cluster is dropped.

use std::time::{Duration, Instant};

use harness::infra::{LocalRedisCluster, LocalService};
use nix::sys::signal::kill;
use nix::unistd::Pid;

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
