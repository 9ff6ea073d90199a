//! What a call can fail with.

use std::time::Duration;

use serde::Deserialize;

/// A refusal: the API's `application/problem+json` answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Problem {
    /// `urn:txengine:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The transaction it is about, when one was claimed: after a 503 it
    /// may still be applied, so retry with this id, never a new one.
    pub id: Option<String>,
}

impl Problem {
    /// `rule-broken`, `not-found`, `unavailable`, ...
    pub fn slug(&self) -> &str {
        self.kind
            .strip_prefix("urn:txengine:problem:")
            .unwrap_or(&self.kind)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.slug(), self.detail)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused the request (its problem says why).
    #[error("refused: {0}")]
    Problem(Problem),
    /// No answer (a connection error or a timeout), not retried: a
    /// request that is never retried, or an error of another kind.
    #[error("no answer: {0}")]
    Transport(#[from] reqwest::Error),
    /// Retried until the caller's bound and still not taken. For a
    /// transaction, `id` is the one to retry with later: it may yet be
    /// applied, and a new id could apply it twice.
    #[error("gave up after {attempts} tries in {elapsed:?}{}: {last}", id.as_ref().map(|id| format!(" (retry with id {id})")).unwrap_or_default())]
    RetriesExhausted {
        id: Option<String>,
        attempts: u32,
        elapsed: Duration,
        last: Box<Error>,
    },
    /// `wait` reached its deadline with the transaction still unsettled.
    #[error("transaction {id} still {status:?} after {waited:?}")]
    WaitTimedOut {
        id: String,
        status: crate::Status,
        waited: Duration,
    },
    /// An answer that is not what the API promises.
    #[error("unexpected answer {status}: {detail}")]
    Unexpected { status: u16, detail: String },
}

impl Error {
    /// The problem of a refusal, also of the last try of exhausted retries.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Problem(problem) => Some(problem),
            Error::RetriesExhausted { last, .. } => last.problem(),
            _ => None,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }

    /// Whether it is a refusal with this slug.
    pub fn is(&self, slug: &str) -> bool {
        self.problem().is_some_and(|p| p.slug() == slug)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
