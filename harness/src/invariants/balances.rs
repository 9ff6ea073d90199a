//! Money is conserved: every account's balance equals its start plus the
//! applied movements of the log (transfers move money, credits and debits
//! are counted); per asset, the accounts' balances add up to their start
//! plus the asset's applied credits less its debits; no balance is outside
//! its account's bounds, and every account holds the asset it was made
//! with.

use std::collections::{BTreeMap, HashMap};

use super::{Reader, Verdict};
use crate::workload::{Kind, Ledger, SentTx};

/// What the log says: each account's balance (its start plus the applied
/// movements), and what its applied credits and debits (and captures to
/// no account) alone added to it: transfers and captures to an account only
/// move money between accounts of one asset.
#[derive(Default)]
pub(super) struct Expected<'l> {
    pub(super) balances: HashMap<&'l str, i128>,
    pub(super) minted: HashMap<&'l str, i128>,
}

/// The starting balances, by account: what the applied log then moves.
pub(super) fn start_balances(ledger: &Ledger) -> Expected<'_> {
    Expected {
        balances: ledger
            .start
            .iter()
            .map(|(a, b)| (a.as_str(), *b as i128))
            .collect(),
        minted: HashMap::new(),
    }
}

/// Moves `tx`'s amount in the expected balances.
pub(super) fn apply_to<'a>(expected: &mut Expected<'a>, tx: &'a SentTx) {
    let amount = tx.amount as i128;
    let balances = &mut expected.balances;
    match tx.kind {
        Kind::Debit => {
            *balances.entry(&tx.account).or_default() -= amount;
            *expected.minted.entry(&tx.account).or_default() -= amount;
        }
        Kind::Credit => {
            *balances.entry(&tx.account).or_default() += amount;
            *expected.minted.entry(&tx.account).or_default() += amount;
        }
        Kind::Transfer | Kind::Capture => {
            *balances.entry(&tx.account).or_default() -= amount;
            match tx.to.as_deref() {
                Some(to) => *balances.entry(to).or_default() += amount,
                // A capture to no account: the money leaves, as a debit.
                None => *expected.minted.entry(&tx.account).or_default() -= amount,
            }
        }
        // Postings move money between accounts of one asset each.
        Kind::Postings => {
            for leg in &tx.legs {
                *balances.entry(&leg.from).or_default() -= leg.amount as i128;
                *balances.entry(&leg.to).or_default() += leg.amount as i128;
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
    expected: &Expected<'l>,
    verdict: &mut Verdict,
) -> anyhow::Result<Vec<(&'l str, i128)>> {
    let accounts: Vec<&str> = expected.balances.keys().copied().collect();
    let mut history_balances = Vec::new();
    let records: Vec<(Option<String>, Option<String>)> = reader
        .query(
            accounts
                .iter()
                .map(|a| reader.account_fields(a, &["balance", "asset"]))
                .collect(),
        )
        .await?;
    // Per asset: the accounts' balances now, and what their start and the
    // applied credits and debits say they must add up to.
    let mut by_asset: BTreeMap<String, (i128, i128)> = BTreeMap::new();
    for (account, (balance, asset)) in accounts.iter().zip(records) {
        let want = expected.balances[account];
        let start = ledger.start.get(*account).copied();
        let spec = ledger.accounts.get(*account).cloned().unwrap_or_default();
        verdict.start_total += start.unwrap_or(0) as i128;
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
                verdict.end_total += have;
                let (min, max) = (spec.min_balance as i128, spec.max_balance as i128);
                if have < min || have > max {
                    verdict.violations.push(format!(
                        "account {account} balance {have} is out of its bounds {min}..={max}"
                    ));
                }
                if asset.as_deref() != Some(spec.asset.as_str()) {
                    verdict.violations.push(format!(
                        "account {account} holds {asset:?}, made with {}",
                        spec.asset
                    ));
                }
                let total = by_asset.entry(spec.asset.clone()).or_default();
                total.0 += have;
                total.1 += start.unwrap_or(0) as i128;
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
    check_conserved_per_asset(ledger, expected, by_asset, verdict);
    Ok(history_balances)
}

/// Per asset, the balances (`by_asset`: now, start) add up to the start
/// plus the applied credits less the applied debits: money moved between
/// two assets would break it even where each account agrees with the log.
fn check_conserved_per_asset(
    ledger: &Ledger,
    expected: &Expected,
    by_asset: BTreeMap<String, (i128, i128)>,
    verdict: &mut Verdict,
) {
    let mut net: BTreeMap<String, i128> = BTreeMap::new();
    for (account, minted) in &expected.minted {
        let asset = ledger
            .accounts
            .get(*account)
            .cloned()
            .unwrap_or_default()
            .asset;
        *net.entry(asset).or_default() += minted;
    }
    for (asset, (now, start)) in &by_asset {
        let moved = net.get(asset).copied().unwrap_or(0);
        if *now != start + moved {
            verdict.violations.push(format!(
                "asset {asset}: its accounts hold {now}, but their start {start} and its applied credits less debits ({moved}) make {}",
                start + moved
            ));
        }
    }
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
