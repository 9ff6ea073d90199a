//! What the clients of a scenario were answered: the ledger of accepted,
//! refused and uncertain transactions, every attempt with its time, and the
//! checks made on them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::Scenario;
use crate::client::ApiClient;
use crate::workload::SentTx;

/// What the topic says against the answers the clients got: every
/// accepted transaction published once, and nothing for a refused request.
pub fn publication_failures(
    published: &HashMap<String, usize>,
    accepted: &[&str],
    refused: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    let leaked: Vec<&str> = refused
        .iter()
        .filter(|id| published.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    if !leaked.is_empty() {
        failures.push(format!(
            "{} refused requests were published anyway: {}",
            leaked.len(),
            leaked
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let not_once: Vec<String> = accepted
        .iter()
        .filter_map(|id| match published.get(*id).copied().unwrap_or(0) {
            1 => None,
            n => Some(format!("{id} ({n} records)")),
        })
        .collect();
    if !not_once.is_empty() {
        failures.push(format!(
            "{} accepted transactions are not in the topic exactly once: {}",
            not_once.len(),
            not_once
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    failures
}

/// The 401s and 429s the scenario expects, and after a revocation no
/// transaction accepted later than the key cache allows (1 s).
pub(super) fn check_refusals(
    scenario: &Scenario,
    results: &ClientResults,
    revoked_at: Option<Instant>,
    failures: &mut Vec<String>,
) {
    let count = |status: StatusCode| {
        results
            .refused_by_status
            .get(&status.as_u16())
            .copied()
            .unwrap_or(0)
    };
    for (least, status) in [
        (scenario.expect.min_unauthorized, StatusCode::UNAUTHORIZED),
        (
            scenario.expect.min_rate_limited,
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ] {
        if let Some(least) = least {
            if count(status) < least {
                failures.push(format!(
                    "{} requests refused with {status}, expected at least {least} (refusals: {:?})",
                    count(status),
                    results.refused_by_status
                ));
            }
        }
    }
    if let Some(revoked_at) = revoked_at {
        let bound = revoked_at + Duration::from_millis(txengine::limits::MAX_KEY_CACHE_MS);
        let late = results.accepted_at.iter().filter(|at| **at > bound).count();
        if late > 0 {
            failures.push(format!(
                "{late} transactions accepted more than 1 s after their key was revoked"
            ));
        }
    }
}

/// How a client's attempts at one transaction ended.
pub(super) enum Answer {
    Accepted,
    Refused(StatusCode),
    /// No answer ever came (the API stayed unreachable): it may or may not
    /// have been published.
    Unknown,
}

#[derive(Default)]
pub(super) struct ClientResults {
    pub(super) accepted: Vec<SentTx>,
    /// When each accepted transaction's answer came.
    accepted_at: Vec<Instant>,
    pub(super) refused: Vec<String>,
    refused_by_status: std::collections::BTreeMap<u16, usize>,
    pub(super) uncertain: Vec<SentTx>,
}

/// One POST of a client: when it was sent, when its answer came, and the
/// status (`None`: no answer, the connection failed).
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    sent: Instant,
    answered: Instant,
    status: Option<u16>,
}

/// How available the API was to the clients over a run.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    /// The longest stretch between two answers that accepted a
    /// transaction (202, or 200 for one already accepted).
    pub longest_without_accept: Duration,
    /// Answers of 503 (publication failed or timed out), each retried.
    pub unavailable_answers: usize,
}

impl Availability {
    pub(super) fn of(attempts: &[Attempt]) -> Self {
        let mut accepted: Vec<Instant> = attempts
            .iter()
            .filter(|a| matches!(a.status, Some(200 | 202)))
            .map(|a| a.answered)
            .collect();
        accepted.sort();
        Self {
            longest_without_accept: accepted
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default(),
            unavailable_answers: attempts.iter().filter(|a| a.status == Some(503)).count(),
        }
    }
}

/// Of the requests sent between `from` and `to`: how many were accepted
/// afresh (202) and answered before `to`, and how many were refused with
/// 503, whenever that answer came. While too few brokers were up to take a
/// write with `acks=all` there must be no 202. A 503 counts by when its
/// request was sent: a publish tried while the brokers were down may be
/// refused only after its timeout, past the window on a busy machine (a CI
/// run lost every 503 of an 8 s window that way). A 200 is not counted: it
/// answers from a record written before, which a request cut off by the
/// fault may have left behind.
pub(super) fn answered_within(attempts: &[Attempt], from: Instant, to: Instant) -> (usize, usize) {
    let sent_within = |a: &&Attempt| a.sent >= from && a.sent <= to;
    let accepted = attempts
        .iter()
        .filter(sent_within)
        .filter(|a| a.status == Some(202) && a.answered <= to)
        .count();
    let refused = attempts
        .iter()
        .filter(sent_within)
        .filter(|a| a.status == Some(503))
        .count();
    (accepted, refused)
}

impl ClientResults {
    pub(super) fn record(&mut self, tx: SentTx, answer: Answer) {
        match answer {
            Answer::Accepted => {
                self.accepted.push(tx);
                self.accepted_at.push(Instant::now());
            }
            Answer::Refused(status) => {
                *self.refused_by_status.entry(status.as_u16()).or_default() += 1;
                self.refused.push(tx.id);
            }
            Answer::Unknown => self.uncertain.push(tx),
        }
    }
}

/// Sends one transaction like a careful client: the same id again after a
/// 409, a 503 or a lost connection, for up to a minute; each attempt goes
/// into `attempts`. An answer that is not JSON is an error, not a retry.
pub(super) async fn send_until_answered(
    api: &ApiClient,
    tx: &SentTx,
    attempts: &Mutex<Vec<Attempt>>,
) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let sent = Instant::now();
        let answer = api.post(&tx.request_body()).await;
        attempts.lock().expect("attempts lock").push(Attempt {
            sent,
            answered: Instant::now(),
            status: answer.as_ref().ok().map(|(status, _)| status.as_u16()),
        });
        match answer {
            Ok((StatusCode::OK | StatusCode::ACCEPTED, _)) => return Ok(Answer::Accepted),
            Ok((StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE, _)) => {}
            Ok((status, _)) => return Ok(Answer::Refused(status)),
            Err(e) if matches!(e.downcast_ref(), Some(txengine_client::Error::Transport(_))) => {}
            Err(e) => return Err(e.context(format!("POST of {}", tx.id))),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Answer::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_is_judged_by_id_not_by_count() {
        let published: HashMap<String, usize> = [("a".to_owned(), 1), ("b".to_owned(), 1)]
            .into_iter()
            .collect();
        assert!(publication_failures(&published, &["a", "b"], &["c".into()]).is_empty());
        let leak = publication_failures(&published, &["a"], &["b".into()]);
        assert_eq!(leak, ["1 refused requests were published anyway: b"]);
        let twice: HashMap<String, usize> = [("a".to_owned(), 2)].into_iter().collect();
        let failures = publication_failures(&twice, &["a", "b"], &[]);
        assert!(failures[0].contains("a (2 records)") && failures[0].contains("b (0 records)"));
    }

    #[test]
    fn availability_is_the_longest_gap_between_accepts() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let attempt = |sent: u64, answered: u64, status| Attempt {
            sent: at(sent),
            answered: at(answered),
            status,
        };
        let attempts = [
            attempt(0, 10, Some(202)),
            attempt(20, 3020, Some(503)),
            attempt(3100, 3200, None),
            attempt(3300, 4010, Some(200)),
            attempt(4000, 4100, Some(202)),
        ];
        let availability = Availability::of(&attempts);
        assert_eq!(
            availability.longest_without_accept,
            Duration::from_millis(4000)
        );
        assert_eq!(availability.unavailable_answers, 1);
        // Sent inside the window and answered inside it: only the last 202.
        assert_eq!(answered_within(&attempts, at(1), at(5000)), (1, 1));
        assert_eq!(answered_within(&attempts, at(0), at(5000)), (2, 1));
        assert_eq!(answered_within(&attempts, at(4001), at(5000)), (0, 0));
        assert_eq!(answered_within(&attempts, at(1), at(4099)), (0, 1));
        assert_eq!(answered_within(&attempts, at(21), at(4099)), (0, 0));
        // A 503 counts by when it was sent, even when answered after `to`.
        assert_eq!(answered_within(&attempts, at(1), at(1000)), (0, 1));
    }
}
