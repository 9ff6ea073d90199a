//! Every accepted transaction has exactly one outcome (applied or rejected),
//! counted with its reason and its time from the client's 2xx to the apply;
//! no refused request has one. Applied transactions, and uncertain ones that
//! Redis says applied, move the expected balances.

use super::balances::{apply_to, Expected};
use super::{Reader, Verdict};
use crate::workload::Ledger;

/// Moves the expected balances by each uncertain request (sent, never
/// answered) that applied: it may have been published, so it counts if so.
pub(super) async fn apply_uncertain<'l>(
    reader: &Reader,
    ledger: &'l Ledger,
    expected: &mut Expected<'l>,
) -> anyhow::Result<()> {
    let states: Vec<Option<String>> = reader
        .query(
            ledger
                .uncertain
                .iter()
                .map(|tx| reader.tx_state(&tx.id))
                .collect(),
        )
        .await?;
    for (tx, state) in ledger.uncertain.iter().zip(states) {
        if state.as_deref() == Some("applied") {
            apply_to(expected, tx);
        }
    }
    Ok(())
}

/// Each accepted transaction has an outcome: counts it (applied, or
/// rejected by reason), moves the expected balances by the applied, and
/// records when each was decided and how long after its accept.
pub(super) async fn check_accepted<'l>(
    reader: &Reader,
    ledger: &'l Ledger,
    expected: &mut Expected<'l>,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let mut accept_to_applied_ms = crate::measure::precise_histogram();
    type Row = (Option<String>, Option<String>, Option<u64>);
    let rows: Vec<Row> = reader
        .query(
            ledger
                .accepted
                .iter()
                .map(|tx| reader.tx_fields(&tx.id, &["state", "reason", "applied_at_ms"]))
                .collect(),
        )
        .await?;
    for (tx, (state, reason, applied_at_ms)) in ledger.accepted.iter().zip(rows) {
        if let Some(applied) = applied_at_ms {
            verdict.last_applied_at_ms = verdict.last_applied_at_ms.max(applied);
            verdict.settled_at_ms.push(applied);
            if tx.accepted_at_ms > 0 {
                accept_to_applied_ms.saturating_record(applied.saturating_sub(tx.accepted_at_ms));
            }
        }
        match state.as_deref() {
            Some("applied") => {
                verdict.applied += 1;
                apply_to(expected, tx);
            }
            Some("rejected") => {
                verdict.rejected += 1;
                *verdict
                    .rejected_by_reason
                    .entry(reason.unwrap_or_default())
                    .or_default() += 1;
            }
            other => verdict.violations.push(format!(
                "accepted {} {} {}->{:?} {} has no outcome (state {other:?})",
                tx.id,
                tx.kind.as_str(),
                tx.account,
                tx.to,
                tx.amount
            )),
        }
    }

    let percentile = |quantile| {
        (!accept_to_applied_ms.is_empty())
            .then(|| accept_to_applied_ms.value_at_quantile(quantile) as f64)
    };
    verdict.accept_to_applied_ms_p50 = percentile(0.50);
    verdict.accept_to_applied_ms_p99 = percentile(0.99);
    Ok(())
}

/// No request that was refused (answered with an error) has an outcome or
/// is pending: a refusal must mean it never reached the log.
pub(super) async fn check_refused(
    reader: &Reader,
    ledger: &Ledger,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let states: Vec<Option<String>> = reader
        .query(
            ledger
                .refused
                .iter()
                .map(|id| reader.tx_state(id))
                .collect(),
        )
        .await?;
    for (id, state) in ledger.refused.iter().zip(states) {
        if let Some(state @ ("applied" | "rejected" | "pending")) = state.as_deref() {
            verdict
                .violations
                .push(format!("refused request {id} has state {state}"));
        }
    }
    Ok(())
}
