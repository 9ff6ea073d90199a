//! The outcomes topic holds exactly the ledger's outcomes: after
//! deduplication by `(id, status)`, one event for each transaction that
//! has an outcome in Redis, saying what its record says (status, reason,
//! balance after, the ledger's kind and account), one `expired` for each
//! hold that expired, none for anything else; every copy of an event (at
//! least once: a redelivery publishes it again) says the same.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use txengine::events::{EventStatus, OutcomeEvent};

use super::Reader;
use crate::workload::{Kind, Ledger, SentTx};

/// How long the events may trail the outcomes in Redis at the check (an
/// event is published after its apply, and a late capture's expiry after
/// the expirer's next scan).
const EVENTS_GRACE: Duration = Duration::from_secs(30);

/// What the topic must hold for one `(id, status)`.
struct Expected<'l> {
    tx: &'l SentTx,
    status: EventStatus,
}

/// Violations of the outcomes topic against the ledger and Redis.
pub(super) async fn check_outcome_events(
    reader: &Reader,
    brokers: &str,
    topic: &str,
    ledger: &Ledger,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    loop {
        let expected = expected_events(reader, ledger).await?;
        let (b, t) = (brokers.to_owned(), topic.to_owned());
        let messages =
            tokio::task::spawn_blocking(move || crate::measure::read_topic(&b, &t)).await??;
        let violations = compare(&expected, &messages, &ledger.accounts);
        if violations.is_empty() || started.elapsed() > EVENTS_GRACE {
            return Ok(violations);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The events Redis's records call for, by `(id, status)`.
async fn expected_events<'l>(
    reader: &Reader,
    ledger: &'l Ledger,
) -> anyhow::Result<BTreeMap<(String, &'static str), Expected<'l>>> {
    let txs: Vec<&SentTx> = ledger.accepted.iter().chain(&ledger.uncertain).collect();
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = reader
        .query(
            txs.iter()
                .map(|tx| {
                    reader.tx_fields(&tx.id, &["state", "reason", "balance_after", "posting"])
                })
                .collect(),
        )
        .await?;
    let holds: Vec<&SentTx> = txs
        .iter()
        .copied()
        .filter(|tx| matches!(tx.kind, Kind::Hold { .. }))
        .collect();
    let hold_states: Vec<Option<String>> = reader
        .query(
            holds
                .iter()
                .map(|tx| {
                    let mut cmd = redis::cmd("HGET");
                    cmd.arg(reader.layout.hold(&tx.account, &tx.id))
                        .arg("state");
                    (reader.layout.shard_of(&tx.account), cmd)
                })
                .collect(),
        )
        .await?;
    let mut expected = BTreeMap::new();
    for (tx, (state, reason, balance_after, posting)) in txs.iter().zip(rows) {
        let status = match state.as_deref() {
            Some("applied") => balance_after
                .and_then(|b| b.parse().ok())
                .and_then(|b| txengine::domain::Balance::new(b).ok())
                .map(|balance_after| EventStatus::Applied { balance_after }),
            Some("rejected") => reason
                .as_deref()
                .and_then(txengine::domain::RejectReason::parse)
                .map(|reason| EventStatus::Rejected {
                    reason,
                    posting: posting.and_then(|index| index.parse().ok()),
                }),
            _ => None,
        };
        if let Some(status) = status {
            expected.insert((tx.id.clone(), status.as_str()), Expected { tx, status });
        }
    }
    for (tx, state) in holds.into_iter().zip(hold_states) {
        if state.as_deref() == Some("expired") {
            let status = EventStatus::Expired;
            expected.insert((tx.id.clone(), status.as_str()), Expected { tx, status });
        }
    }
    Ok(expected)
}

/// What the messages break of `expected`; an applied or rejected event
/// of an account the ledger made (`accounts`) must name its asset.
fn compare(
    expected: &BTreeMap<(String, &'static str), Expected<'_>>,
    messages: &[rdkafka::message::OwnedMessage],
    accounts: &std::collections::HashMap<String, crate::workload::AccountSpec>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let seen = distinct_events(messages, &mut violations);
    for (id, event) in &seen {
        let Some(want) = expected.get(id) else {
            violations.push(format!(
                "event {id:?} for no such outcome in Redis: {event:?}"
            ));
            continue;
        };
        let kind = match want.status {
            EventStatus::Expired => "expire",
            _ => want.tx.kind.as_str(),
        };
        let movement = &event.tx.movement;
        if event.status != want.status
            || movement.kind().as_str() != kind
            || movement.account().as_str() != want.tx.account
        {
            violations.push(format!(
                "event {id:?} says {} {} {:?}, Redis and the ledger {kind} {} {:?}",
                movement.kind(),
                movement.account(),
                event.status,
                want.tx.account,
                want.status
            ));
        }
        if let Some(postings) = movement.postings() {
            check_postings(id, postings, &want.tx.legs, accounts, &mut violations);
        }
        let asset = event.asset.as_ref().map(|asset| asset.as_str());
        let spec = accounts.get(&want.tx.account);
        if let (Some(spec), false) = (spec, want.status == EventStatus::Expired) {
            if asset != Some(spec.asset.as_str()) {
                violations.push(format!(
                    "event {id:?} names asset {asset:?}, its account {} holds {}",
                    want.tx.account, spec.asset
                ));
            }
        }
    }
    let missing: Vec<&(String, &str)> = expected
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        violations.push(format!(
            "{} outcomes have no event (first 10: {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    violations
}

/// A postings event's postings against the ledger's legs: the same moves,
/// each naming the asset of its `from` as the ledger made that account.
fn check_postings(
    id: &(String, &'static str),
    postings: &txengine::domain::Postings,
    legs: &[crate::workload::Leg],
    accounts: &std::collections::HashMap<String, crate::workload::AccountSpec>,
    violations: &mut Vec<String>,
) {
    let said: Vec<(&str, &str, u64)> = postings
        .iter()
        .map(|p| (p.from.as_str(), p.to.as_str(), p.amount.minor_units()))
        .collect();
    let sent: Vec<(&str, &str, u64)> = legs
        .iter()
        .map(|leg| (leg.from.as_str(), leg.to.as_str(), leg.amount))
        .collect();
    if said != sent {
        violations.push(format!(
            "event {id:?} names postings {said:?}, the ledger sent {sent:?}"
        ));
    }
    for posting in postings.iter() {
        let named = posting.asset.as_ref().map(|asset| asset.as_str());
        let made = accounts
            .get(posting.from.as_str())
            .map(|spec| spec.asset.as_str());
        if made.is_some() && named != made {
            violations.push(format!(
                "event {id:?}: a posting from {} names asset {named:?}, the account holds {made:?}",
                posting.from
            ));
        }
    }
}

/// The events of `messages` by `(id, status)`, first copies kept: adds to
/// `violations` each message unread, keyed by another than its account, or
/// a copy that says otherwise than its first (at least once allows copies).
fn distinct_events(
    messages: &[rdkafka::message::OwnedMessage],
    violations: &mut Vec<String>,
) -> HashMap<(String, &'static str), OutcomeEvent> {
    use rdkafka::Message;
    let mut seen: HashMap<(String, &'static str), OutcomeEvent> = HashMap::new();
    for message in messages {
        let event = match OutcomeEvent::decode(message.payload().unwrap_or_default()) {
            Ok(event) => event,
            Err(e) => {
                violations.push(format!("an outcome event unread: {e}"));
                continue;
            }
        };
        let key = message.key().map(String::from_utf8_lossy);
        if key.as_deref() != Some(event.key().as_str()) {
            violations.push(format!(
                "event {} keyed {key:?}, not by its account",
                event.tx.id
            ));
        }
        let id = (event.tx.id.to_string(), event.status.as_str());
        match seen.get(&id) {
            // A copy (at least once) must say the same, but for its time.
            Some(first)
                if (&first.tx, first.status, &first.asset)
                    != (&event.tx, event.status, &event.asset) =>
            {
                violations.push(format!(
                    "event {id:?} published twice, differently: {first:?} then {event:?}"
                ))
            }
            Some(_) => {}
            None => {
                seen.insert(id, event);
            }
        }
    }
    seen
}
