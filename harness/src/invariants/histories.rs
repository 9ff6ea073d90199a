//! Each account's history replays to its balance: every entry's
//! `balance_after` is the sum of the deltas before it and its own, from 0,
//! and no transaction (no posting of a postings transaction) is in one
//! history twice with one status.

use std::collections::HashSet;

use txengine::store::HistoryEntry;

use super::{Reader, Verdict};

/// Each account's history replays to its balance: from 0 (a scenario runs
/// well within the retention, so nothing was trimmed), every entry's
/// `balance_after` is the sum of the deltas so far, and the last is the
/// balance now; no transaction has two entries of one status in it (a
/// postings transaction: one per posting that touched the account).
pub(super) async fn check_histories(
    reader: &Reader,
    balances: &[(&str, i128)],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    type Entry = (String, Vec<String>);
    // A history holds up to a retention's worth of entries: 16 a call.
    let histories: Vec<Vec<Entry>> = reader
        .query_by(
            balances
                .iter()
                .map(|(account, _)| {
                    let mut cmd = redis::cmd("XRANGE");
                    cmd.arg(reader.layout.history(account)).arg("-").arg("+");
                    (reader.layout.shard_of(account), cmd)
                })
                .collect(),
            16,
        )
        .await?;
    for ((account, balance), history) in balances.iter().zip(histories) {
        let entries = history.len();
        let mut replayed: i128 = 0;
        let mut seen = HashSet::new();
        for (position, fields) in history {
            let entry = match HistoryEntry::parse(position, &fields) {
                Ok(entry) => entry,
                Err(e) => {
                    verdict
                        .violations
                        .push(format!("account {account}: a history entry unread: {e}"));
                    break;
                }
            };
            replayed += i128::from(entry.delta);
            if i128::from(entry.balance_after) != replayed {
                verdict.violations.push(format!(
                    "account {account}: history entry {} ({} {} {}) says balance_after {}, \
                     its entries replay to {replayed}",
                    entry.position,
                    entry.id.as_deref().unwrap_or_default(),
                    entry.kind,
                    entry.status,
                    entry.balance_after
                ));
                break;
            }
            if let Some(id) = &entry.id {
                if !seen.insert((id.clone(), entry.status, entry.posting)) {
                    verdict.violations.push(format!(
                        "account {account}: {id} (posting {:?}) is in its history twice as {}",
                        entry.posting, entry.status
                    ));
                }
            }
        }
        if replayed != *balance {
            verdict.violations.push(format!(
                "account {account}: its {entries} history entries replay to {replayed}, its balance is {balance}"
            ));
        }
    }
    Ok(())
}
