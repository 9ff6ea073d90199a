//! Money is conserved: every account's balance equals its start plus the
//! applied movements of the log (transfers move money, credits and debits
//! are counted), and no balance is below 0 or above 2^53-1.

use std::collections::HashMap;

use txengine::limits::MAX_MINOR_UNITS;

use super::{Reader, Verdict};
use crate::workload::{Kind, Ledger, SentTx};

/// The starting balances, by account: what the applied log then moves.
pub(super) fn start_balances(ledger: &Ledger) -> HashMap<&str, i128> {
    ledger
        .start
        .iter()
        .map(|(a, b)| (a.as_str(), *b as i128))
        .collect()
}

/// Moves `tx`'s amount in the expected balances.
pub(super) fn apply_to<'a>(expected: &mut HashMap<&'a str, i128>, tx: &'a SentTx) {
    let amount = tx.amount as i128;
    match tx.kind {
        Kind::Debit => *expected.entry(&tx.account).or_default() -= amount,
        Kind::Credit => *expected.entry(&tx.account).or_default() += amount,
        Kind::Transfer | Kind::Capture => {
            *expected.entry(&tx.account).or_default() -= amount;
            if let Some(to) = tx.to.as_deref() {
                *expected.entry(to).or_default() += amount;
            }
        }
        // A hold moves no balance; a void releases it.
        Kind::Hold { .. } | Kind::Void => {}
    }
}

/// Each account's balance is what `expected` says and within range; sums
/// the start and end totals. Returns the balances whose histories to
/// replay (none when the engine keeps no history).
pub(super) async fn check_balances<'l>(
    reader: &Reader,
    engine: &txengine::config::Config,
    ledger: &Ledger,
    expected: &HashMap<&'l str, i128>,
    verdict: &mut Verdict,
) -> anyhow::Result<Vec<(&'l str, i128)>> {
    let accounts: Vec<&str> = expected.keys().copied().collect();
    let mut history_balances = Vec::new();
    let balances: Vec<(Option<String>,)> = reader
        .query(
            accounts
                .iter()
                .map(|a| reader.account_fields(a, &["balance"]))
                .collect(),
        )
        .await?;
    for (account, (balance,)) in accounts.iter().zip(balances) {
        let want = expected[account];
        let start = ledger.start.get(*account).copied();
        verdict.start_total += start.unwrap_or(0) as u128;
        match balance.as_deref().map(str::parse::<i128>) {
            None if start.is_none() && want == 0 => {}
            None => verdict.violations.push(format!(
                "account {account} is missing; expected balance {want}"
            )),
            Some(Err(_)) => verdict
                .violations
                .push(format!("account {account} holds a non-integer {balance:?}")),
            Some(Ok(have)) => {
                if engine.history_retention_secs() > 0 {
                    history_balances.push((*account, have));
                }
                verdict.end_total += have.max(0) as u128;
                if have < 0 || have > MAX_MINOR_UNITS as i128 {
                    verdict.violations.push(format!(
                        "account {account} balance {have} is out of 0..=2^53-1"
                    ));
                }
                if have != want {
                    let involved = involved_in(ledger, account);
                    verdict.violations.push(format!(
                        "account {account}: balance {have}, expected {want} from start {start:?} and the log; \
                         transactions involved (first 20): {involved:?}"
                    ));
                }
            }
        }
    }
    Ok(history_balances)
}

/// The ids of the first 20 accepted transactions that move `account`'s
/// money, to start from when its balance is wrong.
fn involved_in<'l>(ledger: &'l Ledger, account: &str) -> Vec<&'l str> {
    ledger
        .accepted
        .iter()
        .filter(|t| t.account == account || t.to.as_deref() == Some(account))
        .take(20)
        .map(|t| t.id.as_str())
        .collect()
}
