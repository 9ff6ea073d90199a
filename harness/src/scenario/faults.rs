//! The faults of a scenario: whether this infrastructure can inject them at
//! all, and injecting each one into the run's processes, Redis or Kafka.

use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::{Fault, FaultKind, Scenario, Topology};
use crate::infra::Infra;

/// Refuses a scenario this infrastructure cannot run, before anything
/// starts: an error to run is better than a verdict on faults that could
/// not be injected.
pub(super) fn check_faults_fit(scenario: &Scenario, infra: &Infra) -> anyhow::Result<()> {
    check_fault_processes(scenario, infra)?;
    check_brokers_lost_for_good(scenario, infra)?;
    anyhow::ensure!(
        !scenario.kafka_cluster_only || infra.kafka_nodes >= 3,
        "scenario {} runs on a Kafka of three brokers only (--kafka-nodes 3)",
        scenario.name
    );
    Ok(())
}

/// Each fault needs processes the harness started itself: it cannot kill
/// or restart a Redis or a Kafka it does not own.
fn check_fault_processes(scenario: &Scenario, infra: &Infra) -> anyhow::Result<()> {
    for fault in &scenario.faults {
        let missing = match fault.kind {
            FaultKind::RestartRedis => {
                infra.redis.is_none() && infra.redis_cluster.is_none() && infra.docker.is_none()
            }
            FaultKind::RestartKafka
            | FaultKind::LoseKafkaBrokers
            | FaultKind::StallKafkaBroker
            | FaultKind::RollingRestartKafka => infra.kafka.is_none(),
            FaultKind::Reshard | FaultKind::LoseRedisMaster => infra.redis_cluster.is_none(),
            _ => false,
        };
        if missing {
            bail!(
                "scenario {} injects {:?}, which needs processes the harness started (TXENGINE_INFRA=local)",
                scenario.name,
                fault.kind
            );
        }
    }
    Ok(())
}

/// Brokers lost for good add up, fault after fault: none may leave too
/// few for a write without a for_ms that brings them back, or the load
/// could never finish.
fn check_brokers_lost_for_good(scenario: &Scenario, infra: &Infra) -> anyhow::Result<()> {
    let mut lost_for_good = 0;
    let mut in_order = scenario.faults.clone();
    in_order.sort_by_key(|f| f.at_percent);
    for fault in in_order
        .iter()
        .filter(|f| f.kind == FaultKind::LoseKafkaBrokers)
    {
        if fault.for_ms.is_some() {
            continue;
        }
        lost_for_good += fault.count.unwrap_or(1);
        if without_quorum(infra, lost_for_good) {
            bail!(
                "scenario {}: losing {lost_for_good} of {} Kafka brokers for good leaves too few for a write; give the fault a for_ms",
                scenario.name,
                infra.kafka_nodes
            );
        }
    }
    Ok(())
}

/// With `down` brokers down, fewer are up than a write needs in sync.
fn without_quorum(infra: &Infra, down: usize) -> bool {
    let (_, min_insync) = infra.topic_replication();
    infra.kafka_nodes.saturating_sub(down) < min_insync as usize
}

/// Injects `fault`; when it left too few brokers for a write, the stretch
/// (from when it took hold to when it was lifted), so that the judging can
/// check the API accepted nothing then.
pub(super) async fn inject(
    fault: &Fault,
    topology: &mut Topology,
    infra: &Infra,
) -> anyhow::Result<Option<(Instant, Instant)>> {
    match fault.kind {
        FaultKind::KillConsumer => {
            if !topology.consumers.is_empty() {
                topology.consumers.remove(0).kill();
            }
            topology.add_consumer().await?;
        }
        FaultKind::RestartApi => topology.restart_api().await?,
        FaultKind::AddConsumer => topology.add_consumer().await?,
        FaultKind::RemoveConsumer => {
            if topology.consumers.len() > 1 {
                topology
                    .consumers
                    .remove(0)
                    .terminate(Duration::from_secs(15));
            }
        }
        FaultKind::RestartRedis | FaultKind::LoseRedisMaster | FaultKind::Reshard => {
            inject_redis_fault(fault, &topology.config.namespace, infra)?
        }
        FaultKind::LoseKafkaBrokers => return lose_kafka_brokers(fault, infra).await,
        FaultKind::RestartKafka | FaultKind::StallKafkaBroker | FaultKind::RollingRestartKafka => {
            inject_kafka_fault(fault, infra)?
        }
        FaultKind::Poison => poison_topic(fault, infra, &topology.config.topic).await?,
        FaultKind::RevokeKey => unreachable!("the runner revokes the key itself"),
    }
    Ok(None)
}

/// The Redis faults, on the keys under the run's `namespace` (a cluster
/// finds the master or the slots to move through them).
fn inject_redis_fault(fault: &Fault, namespace: &str, infra: &Infra) -> anyhow::Result<()> {
    match fault.kind {
        FaultKind::RestartRedis => tokio::task::block_in_place(|| infra.restart_redis(namespace)),
        FaultKind::LoseRedisMaster => {
            tokio::task::block_in_place(|| infra.lose_redis_master(namespace))
        }
        FaultKind::Reshard => {
            let slots = fault.count.unwrap_or(2000) as u32;
            tokio::task::block_in_place(|| infra.reshard(namespace, slots))
        }
        other => unreachable!("{other:?} is not a Redis fault"),
    }
}

/// The Kafka faults that are over once they return (a restart, a stall, a
/// rolling restart); losing brokers is [`lose_kafka_brokers`].
fn inject_kafka_fault(fault: &Fault, infra: &Infra) -> anyhow::Result<()> {
    match fault.kind {
        FaultKind::RestartKafka => tokio::task::block_in_place(|| infra.restart_kafka()),
        FaultKind::StallKafkaBroker => {
            let pause = Duration::from_millis(fault.for_ms.unwrap_or_default());
            tokio::task::block_in_place(|| infra.local_kafka()?.stall(pause))
        }
        FaultKind::RollingRestartKafka => {
            tokio::task::block_in_place(|| infra.local_kafka()?.rolling_restart())
        }
        other => unreachable!("{other:?} is not a Kafka fault that ends by itself"),
    }
}

/// Kills `count` brokers (default 1); with a `for_ms` starts them again
/// after it, and returns the stretch when too few were left for a write.
async fn lose_kafka_brokers(
    fault: &Fault,
    infra: &Infra,
) -> anyhow::Result<Option<(Instant, Instant)>> {
    let count = fault.count.unwrap_or(1);
    let down = tokio::task::block_in_place(|| {
        let mut kafka = infra.local_kafka()?;
        kafka.lose(count)?;
        anyhow::Ok(kafka.down().len())
    })?;
    let took_hold = Instant::now();
    if let Some(ms) = fault.for_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let lifted = Instant::now();
        tokio::task::block_in_place(|| infra.heal_kafka())?;
        if without_quorum(infra, down) {
            return Ok(Some((took_hold, lifted)));
        }
    }
    Ok(None)
}

/// Publishes `count` undecodable records into `topic`, as a buggy producer
/// would: the consumers must send them to the DLQ and go on.
async fn poison_topic(fault: &Fault, infra: &Infra, topic: &str) -> anyhow::Result<()> {
    let count = fault.count.unwrap_or(0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &infra.kafka_brokers)
        .create()?;
    for i in 0..count {
        let payload = format!("poison record {i}: not a transaction");
        producer
            .send(
                FutureRecord::to(topic).key("poison").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}
