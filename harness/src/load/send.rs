//! What each goose user sends: one transaction, a hold then its capture, or
//! a batch; over HTTP, or straight to the apply script (the Redis limit).
//! Every answer goes into the run's ledger and latency buckets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use goose::prelude::*;
use txengine::store::Store;

use super::{to_domain, RunState, Target, LOAD_HOLD_TIMEOUT_S};
use crate::workload::{Kind, SentTx};

/// The goose transaction every user repeats: one request in the run's
/// shape (a batch, a hold then its capture, or a single transaction).
pub(super) async fn send_transaction(user: &mut GooseUser) -> TransactionResult {
    let state = user.get_session_data_unchecked::<Arc<RunState>>().clone();
    if state.profile.batch > 1 {
        return send_batch(user, &state).await;
    }
    let tx = state.next_tx();
    let began = Instant::now();
    match &state.target {
        Target::Http { api_key, .. } => {
            if state.profile.holds {
                return send_hold_then_capture(user, &state, api_key, tx).await;
            }
            post_one(user, &state, api_key, tx).await?;
        }
        Target::RedisScript { store } => {
            apply_with_script(&state, store, std::slice::from_ref(&tx), began).await;
        }
    }
    Ok(())
}

/// The Redis limit: `txs` in one call of the apply script's pipeline, one
/// script per transaction (on a cluster, a transfer between slots runs its
/// first step only: the debit of its saga).
async fn apply_with_script(state: &RunState, store: &Store, txs: &[SentTx], began: Instant) {
    let records: Vec<txengine::wire::Record> = txs
        .iter()
        .map(|tx| txengine::wire::Record {
            tx: to_domain(tx).expect("the runner makes valid transactions"),
            accepted_at_ms: 0,
            saga: None,
        })
        .collect();
    match store.apply_records(&records).await {
        Ok(_) => {
            state.record(began, None);
            state
                .transactions_ok
                .fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        Err(e) => state.record(began, Some(format!("redis: {e}"))),
    }
}

/// The kind of failure of a request the engine shed (503 `overloaded`: the
/// consumers were too far behind; nothing was claimed or written).
pub const SHED: &str = "shed (503 overloaded)";

/// Whether a 503's problem says the engine shed the request.
async fn shed(response: Result<reqwest::Response, reqwest::Error>) -> bool {
    let Ok(response) = response else {
        return false;
    };
    response
        .text()
        .await
        .is_ok_and(|body| body.contains("urn:txengine:problem:overloaded"))
}

/// Posts `tx` alone (`POST /transactions`) and reads the answer into the
/// ledger; `Ok(true)` when it was accepted.
async fn post_one(
    user: &mut GooseUser,
    state: &RunState,
    api_key: &str,
    mut tx: SentTx,
) -> Result<bool, Box<goose::prelude::TransactionError>> {
    let began = Instant::now();
    let body = tx.request_body();
    state
        .in_flight
        .lock()
        .expect("in-flight lock")
        .insert(tx.id.clone(), tx.clone());
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/transactions")?
        .header("authorization", format!("Bearer {api_key}"))
        .json(&body);
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/transactions")
        .set_request_builder(builder)
        .build();
    let sent = user.request(request).await;
    state
        .in_flight
        .lock()
        .expect("in-flight lock")
        .remove(&tx.id);
    let mut goose = sent?;
    // The status, or whether the request timed out.
    let status = goose
        .response
        .as_ref()
        .map(|r| r.status().as_u16())
        .map_err(reqwest::Error::is_timeout);
    let shed_503 = status == Ok(503) && shed(goose.response).await;
    let failure = match status {
        Ok(200 | 202) => {
            state.record(began, None);
            state.transactions_ok.fetch_add(1, Ordering::Relaxed);
            tx.accepted_at_ms = txengine::wire::now_ms();
            state.accepted.lock().expect("ledger lock").push(tx);
            return Ok(true);
        }
        // Refused (a 4xx), or shed (503 overloaded): nothing was claimed
        // or written.
        Ok(code) if code < 500 => refused(state, tx, format!("http {code}")),
        Ok(503) if shed_503 => refused(state, tx, SHED.to_owned()),
        // A 503 after a publish timeout, a timeout or a lost connection:
        // the record may still land and be applied.
        other => {
            let kind = match other {
                Ok(code) => format!("http {code}"),
                Err(true) => "timeout".to_owned(),
                Err(false) => "connection".to_owned(),
            };
            state.unanswered.lock().expect("ledger lock").push(tx);
            kind
        }
    };
    state.record(began, Some(failure.clone()));
    user.set_failure(&failure, &mut goose.request, None, None)?;
    Ok(false)
}

/// Puts `tx` in the ledger as refused (nothing of it may exist); its kind of
/// failure.
fn refused(state: &RunState, tx: SentTx, kind: String) -> String {
    state.refused.lock().expect("ledger lock").push(tx.id);
    kind
}

/// A hold of the drawn transaction's amount (for its `to`, when it is a
/// transfer), then, once it is accepted, its capture of all of it.
async fn send_hold_then_capture(
    user: &mut GooseUser,
    state: &RunState,
    api_key: &str,
    drawn: SentTx,
) -> TransactionResult {
    let to = drawn.to.clone().filter(|_| drawn.kind == Kind::Transfer);
    let hold = SentTx {
        kind: Kind::Hold {
            timeout_s: LOAD_HOLD_TIMEOUT_S,
        },
        to: to.clone(),
        ..drawn
    };
    let capture = SentTx {
        id: format!("{}-c", hold.id),
        kind: Kind::Capture,
        account: hold.account.clone(),
        to,
        amount: hold.amount,
        accepted_at_ms: 0,
        hold: Some(hold.id.clone()),
        legs: Vec::new(),
    };
    if post_one(user, state, api_key, hold).await? {
        post_one(user, state, api_key, capture).await?;
    }
    Ok(())
}

/// One request of `batch` transactions: `POST /transactions/batch`, each
/// item's result read into the ledger; or, for the Redis limit, one call of
/// the apply script's pipeline with that many records.
async fn send_batch(user: &mut GooseUser, state: &RunState) -> TransactionResult {
    let txs: Vec<SentTx> = (0..state.profile.batch).map(|_| state.next_tx()).collect();
    let began = Instant::now();
    match &state.target {
        Target::Http { api_key, .. } => post_batch(user, state, api_key, txs, began).await,
        Target::RedisScript { store } => {
            apply_with_script(state, store, &txs, began).await;
            Ok(())
        }
    }
}

/// `POST /transactions/batch` with `txs`, which stay in flight until its
/// answer is read (what goose stops mid-request may still be applied);
/// then the answer goes into the ledger, item by item.
async fn post_batch(
    user: &mut GooseUser,
    state: &RunState,
    api_key: &str,
    mut txs: Vec<SentTx>,
    began: Instant,
) -> TransactionResult {
    let items: Vec<serde_json::Value> = txs.iter().map(SentTx::request_body).collect();
    {
        let mut in_flight = state.in_flight.lock().expect("in-flight lock");
        for tx in &txs {
            in_flight.insert(tx.id.clone(), tx.clone());
        }
    }
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/transactions/batch")?
        .header("authorization", format!("Bearer {api_key}"))
        .json(&serde_json::json!({ "transactions": items }));
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/transactions/batch")
        .set_request_builder(builder)
        .build();
    let sent = user.request(request).await;
    let mut goose = sent?;
    let answer = match goose.response {
        Ok(response) if response.status() == 200 => response
            .json::<serde_json::Value>()
            .await
            .map_err(|e| e.to_string()),
        Ok(response) if response.status() == 503 => match shed(Ok(response)).await {
            true => Err(SHED.to_owned()),
            false => Err("http 503".to_owned()),
        },
        Ok(response) => Err(format!("http {}", response.status().as_u16())),
        Err(e) if e.is_timeout() => Err("timeout".to_owned()),
        Err(_) => Err("connection".to_owned()),
    };
    {
        let mut in_flight = state.in_flight.lock().expect("in-flight lock");
        for tx in &txs {
            in_flight.remove(&tx.id);
        }
    }
    let results = answer.and_then(|answer| match answer["results"].as_array() {
        Some(results) if results.len() == txs.len() => Ok(results.clone()),
        _ => Err("a batch answer without one result per item".to_owned()),
    });
    let results = match results {
        Ok(results) => results,
        Err(kind) => {
            record_failed_batch(state, began, &kind, txs);
            return user.set_failure(&kind, &mut goose.request, None, None);
        }
    };
    record_batch_results(state, began, &mut txs, &results);
    Ok(())
}

/// A batch without one result per item counts as one failed request; its
/// transactions go into the ledger as refused or as possibly applied.
fn record_failed_batch(state: &RunState, began: Instant, kind: &str, txs: Vec<SentTx>) {
    state.record(began, Some(kind.to_owned()));
    // A 4xx refused the whole batch, and so did a shed one; anything else
    // may still land.
    let refused = kind.starts_with("http 4") || kind == SHED;
    if refused {
        let mut ledger = state.refused.lock().expect("ledger lock");
        ledger.extend(txs.into_iter().map(|tx| tx.id));
    } else {
        state.unanswered.lock().expect("ledger lock").extend(txs);
    }
}

/// An answered batch counts as one request; each item goes into the ledger
/// by its status: taken, possibly still landing, or refused.
fn record_batch_results(
    state: &RunState,
    began: Instant,
    txs: &mut [SentTx],
    results: &[serde_json::Value],
) {
    state.record(began, None);
    let accepted_at_ms = txengine::wire::now_ms();
    for (tx, result) in txs.iter_mut().zip(results) {
        match result["status"].as_str().unwrap_or_default() {
            "pending" | "applied" | "rejected" => {
                tx.accepted_at_ms = accepted_at_ms;
                state.transactions_ok.fetch_add(1, Ordering::Relaxed);
                state.accepted.lock().expect("ledger lock").push(tx.clone());
            }
            // May still land (a publish that failed), or in flight.
            status @ ("unavailable" | "in_flight") => {
                state.count_error(format!("item {status}"));
                state
                    .unanswered
                    .lock()
                    .expect("ledger lock")
                    .push(tx.clone());
            }
            status => {
                state.count_error(format!("item {status}"));
                state
                    .refused
                    .lock()
                    .expect("ledger lock")
                    .push(tx.id.clone());
            }
        }
    }
}
