//! A backlog for the consumers: transactions of the load mix published
//! straight into the topic, as the API would have, without the API.

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::{to_domain, LoadProfile, RunState, Target};
use crate::workload::SentTx;

/// Publishes `count` transactions of the load mix straight into `topic`, as
/// the API would have, and returns them: a backlog for the consumers.
pub async fn publish_backlog(
    brokers: &str,
    topic: &str,
    profile: &LoadProfile,
    count: usize,
) -> anyhow::Result<Vec<SentTx>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let state = RunState::new(
        Target::Http {
            base_url: String::new(),
            api_key: String::new(),
        },
        profile,
        "backlog",
    );
    let mut sent = Vec::with_capacity(count);
    let mut deliveries = Vec::with_capacity(10_000);
    for i in 0..count {
        let tx = state.next_tx();
        let record = txengine::wire::Record {
            tx: to_domain(&tx)?,
            accepted_at_ms: txengine::wire::now_ms(),
            saga: None,
        };
        let payload = record.encode();
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&tx.account).payload(&payload))
            .map_err(|(e, _)| e)?;
        deliveries.push(delivery);
        sent.push(tx);
        if deliveries.len() == 10_000 || i + 1 == count {
            for delivery in deliveries.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
        }
        if (i + 1) % 200_000 == 0 {
            eprintln!("  published {} of {count}", i + 1);
        }
    }
    Ok(sent)
}
