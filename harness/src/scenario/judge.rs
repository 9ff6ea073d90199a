//! Judging a run once the load is over: the answers the clients got, the
//! ledger against the invariants and the scenario's expectations, and the
//! replays that must move no money.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::answers::{answered_within, Attempt, ClientResults};
use super::{publication_failures, Scenario, Topology};
use crate::client::ApiClient;
use crate::infra::Infra;
use crate::invariants;
use crate::measure::{published_transactions, topic_size, wait_drained};
use crate::stack::EngineProcess;
use crate::workload::Ledger;

/// While too few brokers were up to take a write, no request may have been
/// accepted afresh, and some must have been refused with 503: the API must
/// not promise what Kafka could not hold.
pub(super) fn check_none_accepted_without_quorum(
    attempts: &[Attempt],
    without_quorum: &[(Instant, Instant)],
    failures: &mut Vec<String>,
) {
    if without_quorum.is_empty() {
        failures.push("no fault left too few Kafka brokers for a write".into());
    }
    for &(from, to) in without_quorum {
        let (accepted, unavailable) = answered_within(attempts, from, to);
        if accepted > 0 {
            failures.push(format!(
                "{accepted} requests got 202 while too few brokers were up to take a write"
            ));
        }
        if unavailable == 0 {
            failures.push("no request was refused with 503 while the brokers were down".into());
        }
    }
}

/// Builds the ledger of the clients' answers and judges it: the topic
/// against the answers, the invariants, the scenario's expectations and the
/// DLQ. The ledger is returned for the replays.
pub(super) async fn judge_ledger(
    scenario: &Scenario,
    infra: &Infra,
    config: &txengine::Config,
    results: ClientResults,
    opened: Ledger,
    failures: &mut Vec<String>,
) -> anyhow::Result<(invariants::Verdict, Ledger)> {
    if scenario.expect.topic_holds_accepted {
        let published = published_transactions(&infra.kafka_brokers, &config.topic)?;
        let accepted: Vec<&str> = results.accepted.iter().map(|tx| tx.id.as_str()).collect();
        failures.extend(publication_failures(
            &published,
            &accepted,
            &results.refused,
        ));
    }
    let ledger = Ledger {
        accepted: results.accepted,
        refused: results.refused,
        uncertain: results.uncertain,
        ..opened
    };
    let verdict = invariants::check(infra, config, &ledger).await?;
    check_expectations(scenario, &verdict, failures);
    check_dlq(scenario, infra, config, failures)?;
    Ok((verdict, ledger))
}

/// The DLQ must hold exactly the records the scenario expects there (its
/// poison): fewer means poison was lost, more that valid records were.
fn check_dlq(
    scenario: &Scenario,
    infra: &Infra,
    config: &txengine::Config,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    if let Some(dlq) = scenario.expect.dlq {
        let found = topic_size(&infra.kafka_brokers, &config.dlq_topic)?;
        if found != dlq as i64 {
            failures.push(format!("DLQ holds {found} records, expected {dlq}"));
        }
    }
    Ok(())
}

/// The replays the scenario asks for (duplicate POSTs, the topic read again
/// by a new group) must move no money: the balances before and after them
/// must be equal.
pub(super) async fn check_replays(
    scenario: &Scenario,
    infra: &Infra,
    topology: &Topology,
    admin: &ApiClient,
    ledger: &Ledger,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    // Reads with a key of its own: the clients' may be revoked.
    let api = admin.with_new_key().await?;
    let before = api.balances(scenario.accounts.count).await?;
    if scenario.expect.duplicate_posts {
        post_duplicates(infra, &topology.config, &api, ledger, failures).await?;
    }
    if scenario.expect.replay_topic {
        replay_topic(infra, topology, failures).await?;
    }
    let after = api.balances(scenario.accounts.count).await?;
    if (scenario.expect.duplicate_posts || scenario.expect.replay_topic) && before != after {
        let moved: Vec<String> = before
            .iter()
            .filter(|(a, b)| after.get(*a) != Some(b))
            .map(|(a, b)| format!("{a}: {b} -> {:?}", after.get(a)))
            .collect();
        failures.push(format!("replays moved money: {moved:?}"));
    }
    Ok(())
}

/// POSTs every accepted transaction again (same id, same body), as a client
/// that never saw its answer would: each must be answered as accepted, and
/// the lag must return to 0.
async fn post_duplicates(
    infra: &Infra,
    config: &txengine::Config,
    api: &ApiClient,
    ledger: &Ledger,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    for tx in &ledger.accepted {
        let (status, body) = api.post(&tx.request_body()).await?;
        if status != StatusCode::OK && status != StatusCode::ACCEPTED {
            failures.push(format!(
                "duplicate POST of {} answered {status} {body}",
                tx.id
            ));
        }
    }
    if let Err(e) = wait_drained(
        &infra.kafka_brokers,
        &config.group,
        &config.topic,
        Duration::from_secs(60),
    )
    .await
    {
        failures.push(format!("lag after duplicate POSTs: {e:#}"));
    }
    Ok(())
}

/// Reads the whole topic again with a consumer of a new group, as a group
/// reset to the start would: it must drain (and, judged by the caller, move
/// no money).
async fn replay_topic(
    infra: &Infra,
    topology: &Topology,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let config = &topology.config;
    let mut replay = config.clone();
    replay.group = format!("{}-replay", config.group);
    let consumer = EngineProcess::spawn_consumer(&topology.exe, replay.clone()).await?;
    if let Err(e) = wait_drained(
        &infra.kafka_brokers,
        &replay.group,
        &replay.topic,
        Duration::from_secs(120),
    )
    .await
    {
        failures.push(format!("replay group did not drain: {e:#}"));
    }
    consumer.terminate(Duration::from_secs(10));
    Ok(())
}

/// The scenario's own counts (applied, rejected) and, for transfers only,
/// a total that did not move: what the invariants cannot know.
fn check_expectations(
    scenario: &Scenario,
    verdict: &invariants::Verdict,
    failures: &mut Vec<String>,
) {
    if let Some(applied) = scenario.expect.applied {
        if verdict.applied != applied {
            failures.push(format!(
                "{} applied, expected exactly {applied}",
                verdict.applied
            ));
        }
    }
    if let Some(rejected) = scenario.expect.rejected {
        if verdict.rejected != rejected {
            failures.push(format!(
                "{} rejected, expected exactly {rejected}",
                verdict.rejected
            ));
        }
    }
    let only_transfers = scenario.mix.transfer == 100;
    if only_transfers && verdict.start_total != verdict.end_total {
        failures.push(format!(
            "transfers only, yet the total moved from {} to {}",
            verdict.start_total, verdict.end_total
        ));
    }
}
