//! The three client libraries against one live engine on a Kafka of its own
//! (its faults stall only this engine): the shared cases
//! (`clients/cases.json`) and the Kafka stall, with the Rust client here and
//! with the Python and TypeScript suites as child processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use harness::stack::{isolated_config, Stack};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use txengine_client::{
    AccountSpec, Client, Error, HistoryQuery, ItemStatus, KeySpec, NewTransaction, Posting,
    RetryPolicy, Status,
};

use crate::infra;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients")
}

#[tokio::test(flavor = "multi_thread")]
async fn client_libraries_against_a_live_engine() {
    let infra = infra().beside_own_kafka(1).unwrap();
    let mut config = isolated_config(&infra, "clients");
    // A stalled broker is answered 503 after 2 s, inside the bounds below.
    config.publish_timeout_ms = 2_000;
    let stack = Stack::start_with(config).await.unwrap();
    let engine = Engine {
        url: stack.url.clone(),
        admin_token: stack.admin_token.clone(),
        api_key: stack.api_key.clone().unwrap(),
        kafka_pid: infra.pids().1[0],
    };
    // In a task of its own, so that a panic in it comes back here as an
    // error: a test that unwinds with the engine running never ends (the
    // runtime waits for the engine's blocking tasks).
    let checked = tokio::spawn(check_every_client(engine)).await;
    stack.stop().await.unwrap();
    checked.unwrap().unwrap();
}

/// What the clients need of the engine under test.
struct Engine {
    url: String,
    admin_token: String,
    api_key: String,
    /// Its Kafka broker, stopped and resumed by the fault tests.
    kafka_pid: u32,
}

fn shared_cases() -> Value {
    let text = std::fs::read_to_string(clients_dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn check_every_client(engine: Engine) -> anyhow::Result<()> {
    // The library's own defaults (the harness's clients try once).
    let admin = Client::new(&engine.url, &engine.admin_token)?;
    let key = admin.with_token(&engine.api_key);
    let cases = shared_cases();
    for (index, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let prefix = format!(
            "rs-{}-{index}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        run_case(&admin, &key, case, &prefix)
            .await
            .map_err(|e| e.context(format!("rust client, case {}", case["name"])))?;
    }
    kafka_stalled_within_and_past_the_bound(&admin, &key, engine.kafka_pid).await?;

    let env = [
        ("TXENGINE_URL", engine.url.clone()),
        ("TXENGINE_ADMIN_TOKEN", engine.admin_token.clone()),
        ("TXENGINE_API_KEY", engine.api_key.clone()),
        ("TXENGINE_KAFKA_PID", engine.kafka_pid.to_string()),
    ];
    let python = crate::installed_tools_dir()
        .context("no HOME for the Python client's venv")?
        .join("clients-python/bin/python");
    let pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider"];
    let dir = |language| clients_dir().join(language);
    crate::run_suite(
        "the python client's",
        &dir("python"),
        &python,
        &pytest,
        &env,
    )?;
    crate::run_suite(
        "the typescript client's",
        &dir("typescript"),
        Path::new("npm"),
        &["test", "--silent"],
        &env,
    )
}

#[test]
fn the_rust_clients_retry_rules_are_the_shared_ones() {
    let cases = shared_cases();
    for rule in cases["retry_rules"].as_array().unwrap() {
        let status = rule["status"].as_u64().unwrap() as u16;
        assert_eq!(
            txengine_client::is_retried_status(status),
            rule["retried"].as_bool().unwrap(),
            "{rule}"
        );
    }
    let retried: Vec<String> =
        serde_json::from_value(cases["batch_retried_statuses"].clone()).unwrap();
    for status in [
        "pending",
        "applied",
        "rejected",
        "conflict",
        "in_flight",
        "invalid",
        "forbidden",
        "rate_limited",
        "unavailable",
    ] {
        let item: txengine_client::ItemStatus = serde_json::from_value(json!(status)).unwrap();
        assert_eq!(
            item.is_retried(),
            retried.iter().any(|r| r == status),
            "{status}"
        );
    }
}

/// What a case's steps name: transactions, keys and times.
#[derive(Default)]
struct Names {
    transactions: HashMap<String, NewTransaction>,
    /// A key's id and secret.
    keys: HashMap<String, (String, String)>,
    times: HashMap<String, String>,
}

async fn run_case(admin: &Client, key: &Client, case: &Value, prefix: &str) -> anyhow::Result<()> {
    let account = |name: &str| format!("{prefix}-{name}");
    for (name, spec) in case["accounts"].as_object().unwrap() {
        let spec_of = AccountSpec {
            asset: spec["asset"].as_str().map(str::to_owned),
            min_balance: spec["min_balance"].as_i64(),
            max_balance: spec["max_balance"].as_i64(),
            metadata: None,
        };
        admin.put_account(&account(name), &spec_of).await?;
        admin
            .set_balance(&account(name), spec["balance"].as_i64().unwrap_or(0))
            .await?;
    }
    let mut names = Names::default();
    for step in case["steps"].as_array().unwrap() {
        run_step(admin, key, step, &account, &mut names)
            .await
            .map_err(|e| e.context(format!("step {step}")))?;
    }
    Ok(())
}

async fn run_step(
    admin: &Client,
    key: &Client,
    step: &Value,
    account: &(dyn Fn(&str) -> String + Sync),
    names: &mut Names,
) -> anyhow::Result<()> {
    let mut client = match step["key"].as_str() {
        Some(label) => key.with_token(&names.keys[label].1),
        None => key.clone(),
    };
    if step["retry"] == "never" {
        client = client.with_retry(RetryPolicy::NEVER);
    }
    if let Some(body) = step.get("submit") {
        let mut tx = transaction_of(body, account, names);
        if let Some(same) = step["same_id_as"].as_str() {
            tx.id = names.transactions[same].id.clone();
        }
        let answer = client.submit(&tx).await;
        if let Some(label) = step["as"].as_str() {
            names.transactions.insert(label.to_owned(), tx.clone());
        }
        let answer = match expect_refusal(step, answer)? {
            Some(answer) => answer,
            None => return Ok(()),
        };
        anyhow::ensure!(answer.id == tx.id, "answered {} for {}", answer.id, tx.id);
        fields_match(&step["answers"], &serde_json::to_value(&answer)?)?;
        if !step["settles"].is_null() {
            let settled = key.wait(&tx.id, Duration::from_secs(20)).await?;
            fields_match(&step["settles"], &serde_json::to_value(&settled)?)?;
        }
    } else if let Some(items) = step.get("batch") {
        let txs: Vec<_> = items
            .as_array()
            .unwrap()
            .iter()
            .map(|item| transaction_of(item, account, names))
            .collect();
        let results = client.submit_batch(&txs).await?;
        anyhow::ensure!(results.len() == txs.len(), "{} results", results.len());
        for ((expected, result), tx) in step["results"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&results)
            .zip(&txs)
        {
            anyhow::ensure!(
                result.id.as_deref() == Some(tx.id.as_str()),
                "result of {}",
                tx.id
            );
            fields_match(expected, &serde_json::to_value(result)?)?;
        }
        for (expected, tx) in step["settles"].as_array().unwrap().iter().zip(&txs) {
            if !expected.is_null() {
                let settled = key.wait(&tx.id, Duration::from_secs(20)).await?;
                fields_match(expected, &serde_json::to_value(&settled)?)?;
            }
        }
    } else if let Some(name) = step["balance"].as_str() {
        let balance = client.balance(&account(name)).await?;
        fields_match(&step["is"], &serde_json::to_value(balance)?)?;
    } else if let Some(label) = step["transaction"].as_str() {
        let id = names
            .transactions
            .get(label)
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), |tx| tx.id.clone());
        if let Some(found) = expect_refusal(step, client.transaction(&id).await)? {
            fields_match(&step["is"], &serde_json::to_value(&found)?)?;
        }
    } else if let Some(name) = step["history"].as_str() {
        let query = HistoryQuery {
            limit: step["limit"].as_u64().map(|l| l as u32),
            ..Default::default()
        };
        let entries = client.history(&account(name), query).collect().await?;
        let expected = step["entries"].as_array().unwrap();
        anyhow::ensure!(
            entries.len() == expected.len(),
            "{} entries: {entries:?}",
            entries.len()
        );
        for (expected, entry) in expected.iter().zip(&entries) {
            fields_match(expected, &serde_json::to_value(entry)?)?;
        }
    } else if let Some(label) = step["mark"].as_str() {
        let name = account(step["account"].as_str().unwrap());
        let newest = client
            .history(
                &name,
                HistoryQuery {
                    limit: Some(1),
                    ..Default::default()
                },
            )
            .next()
            .await?;
        let newest = newest.ok_or_else(|| anyhow::anyhow!("{name} has no history"))?;
        names.times.insert(label.to_owned(), newest.at);
    } else if let Some(name) = step["account"].as_str() {
        let found = client.account(&account(name)).await?;
        fields_match(&step["is"], &serde_json::to_value(found)?)?;
    } else if let Some(name) = step["balance_at"].as_str() {
        let at = &names.times[step["at"].as_str().unwrap()];
        let then = client.balance_at(&account(name), at).await?;
        fields_match(&step["is"], &serde_json::to_value(then)?)?;
    } else if let Some(name) = step["put_account"].as_str() {
        let spec: AccountSpec = serde_json::from_value(step["spec"].clone())?;
        if let Some(found) = expect_refusal(step, admin.put_account(&account(name), &spec).await)? {
            fields_match(&step["is"], &serde_json::to_value(found)?)?;
        }
    } else if let Some(spec) = step.get("create_key") {
        let spec = KeySpec {
            accounts: spec["accounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| account(a.as_str().unwrap()))
                .collect(),
            rate_per_s: spec["rate_per_s"].as_u64(),
            burst: spec["burst"].as_u64(),
        };
        let created = admin.create_key(&spec).await?;
        names.keys.insert(
            step["as"].as_str().unwrap().to_owned(),
            (created.key.id, created.secret),
        );
    } else if let Some(label) = step["keys_include"].as_str() {
        let id = &names.keys[label].0;
        anyhow::ensure!(
            admin.keys().await?.iter().any(|k| &k.id == id),
            "key {id} not listed"
        );
    } else if let Some(label) = step["revoke"].as_str() {
        admin.revoke_key(&names.keys[label].0).await?;
    } else {
        anyhow::bail!("a step this runner does not know");
    }
    Ok(())
}

/// The typed transaction a case writes as the API takes it, built with the
/// library's constructors; account names get the case's prefix, holds name
/// an earlier transaction.
fn transaction_of(
    body: &Value,
    account: &(dyn Fn(&str) -> String + Sync),
    names: &Names,
) -> NewTransaction {
    let name = |field: &str| account(body[field].as_str().unwrap());
    let amount = || body["amount"].as_u64().unwrap();
    let hold = || {
        names.transactions[body["hold"].as_str().unwrap()]
            .id
            .clone()
    };
    let mut tx = match body["type"].as_str().unwrap() {
        "debit" => NewTransaction::debit(name("account"), amount()),
        "credit" => NewTransaction::credit(name("account"), amount()),
        "transfer" => NewTransaction::transfer(name("account"), name("to"), amount()),
        "hold" => NewTransaction::hold_for(
            name("account"),
            amount(),
            body["to"].as_str().map(account),
            body["timeout_s"].as_u64(),
        ),
        "capture" => NewTransaction::capture(hold(), body["amount"].as_u64()),
        "void" => NewTransaction::void(hold()),
        "postings" => NewTransaction::postings(
            body["postings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    Posting::new(
                        account(p["from"].as_str().unwrap()),
                        account(p["to"].as_str().unwrap()),
                        p["amount"].as_u64().unwrap(),
                    )
                })
                .collect(),
        ),
        other => panic!("a type the cases do not have: {other}"),
    };
    if let Some(asset) = body["asset"].as_str() {
        tx = tx.with_asset(asset);
    }
    for (key, value) in body["metadata"].as_object().into_iter().flatten() {
        tx = tx.with_metadata(key, value.as_str().unwrap());
    }
    tx
}

/// The answer of a step that expects one; `None` when the step expects a
/// refusal and it came as it says.
fn expect_refusal<T: std::fmt::Debug>(
    step: &Value,
    answer: Result<T, Error>,
) -> anyhow::Result<Option<T>> {
    let expected = &step["refused"];
    match answer {
        Ok(answer) if expected.is_null() => Ok(Some(answer)),
        Ok(answer) => anyhow::bail!("expected the refusal {expected}, got {answer:?}"),
        Err(e) if expected.is_null() => Err(e.into()),
        // A refusal that is not retried comes as it is, never wrapped.
        Err(Error::Problem(problem)) => {
            anyhow::ensure!(
                u64::from(problem.status) == expected["status"].as_u64().unwrap()
                    && problem.slug() == expected["slug"],
                "expected {expected}, got {problem}"
            );
            Ok(None)
        }
        Err(e) => anyhow::bail!("expected {expected}, got {e}"),
    }
}

/// Every field `expected` lists equals the answer's (`null`: absent).
fn fields_match(expected: &Value, actual: &Value) -> anyhow::Result<()> {
    for (field, want) in expected.as_object().into_iter().flatten() {
        let got = actual.get(field).unwrap_or(&Value::Null);
        anyhow::ensure!(
            got == want,
            "{field}: expected {want}, got {got} in {actual}"
        );
    }
    Ok(())
}

/// Kafka stopped (SIGSTOP) while the client submits, one at a time and in a
/// batch: resumed within the retry bound, every submission is applied
/// exactly once; stalled past it,
/// the error names the id, and a later retry with it applies it once.
async fn kafka_stalled_within_and_past_the_bound(
    admin: &Client,
    key: &Client,
    kafka_pid: u32,
) -> anyhow::Result<()> {
    let kafka = Pid::from_raw(kafka_pid as i32);
    let payer = format!(
        "rs-stall-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    admin.put_account(&payer, &AccountSpec::default()).await?;
    admin.set_balance(&payer, 1_000).await?;
    let patient = key.with_retry(RetryPolicy {
        max_elapsed: Duration::from_secs(30),
        ..RetryPolicy::default()
    });
    let txs: Vec<_> = (1..=5)
        .map(|amount| NewTransaction::debit(&payer, amount))
        .collect();
    kill(kafka, Signal::SIGSTOP)?;
    let submits: Vec<_> = txs
        .iter()
        .map(|tx| {
            let (client, tx) = (patient.clone(), tx.clone());
            tokio::spawn(async move { client.submit(&tx).await })
        })
        .collect();
    let batch: Vec<_> = (6..=8)
        .map(|amount| NewTransaction::debit(&payer, amount))
        .collect();
    let batch_submit = {
        let (client, batch) = (patient.clone(), batch.clone());
        tokio::spawn(async move { client.submit_batch(&batch).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    kill(kafka, Signal::SIGCONT)?;
    for submit in submits {
        submit.await?.context("taken within the retry bound")?;
    }
    for result in batch_submit.await?? {
        anyhow::ensure!(
            matches!(result.status, ItemStatus::Pending | ItemStatus::Applied),
            "a batch item not taken within the retry bound: {result:?}"
        );
    }
    for tx in txs.iter().chain(&batch) {
        let settled = key.wait(&tx.id, Duration::from_secs(30)).await?;
        anyhow::ensure!(settled.status == Status::Applied, "{settled:?}");
    }

    let hasty = key.with_retry(RetryPolicy {
        max_elapsed: Duration::from_secs(1),
        ..RetryPolicy::default()
    });
    let late = NewTransaction::debit(&payer, 100);
    kill(kafka, Signal::SIGSTOP)?;
    let refused = hasty.submit(&late).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill(kafka, Signal::SIGCONT)?;
    match refused {
        Err(Error::RetriesExhausted { id, .. }) if id.as_deref() == Some(late.id.as_str()) => {}
        other => anyhow::bail!(
            "expected exhausted retries naming {}, got {other:?}",
            late.id
        ),
    }
    patient
        .submit(&late)
        .await
        .context("the retry with the id it named")?;
    key.wait(&late.id, Duration::from_secs(30)).await?;

    let balance = key.balance(&payer).await?;
    anyhow::ensure!(
        balance.balance == 1_000 - 15 - 21 - 100,
        "not each applied once: {balance:?}"
    );
    let entries = key
        .history(&payer, HistoryQuery::default())
        .collect()
        .await?;
    for tx in txs.iter().chain(&batch).chain([&late]) {
        let applied = entries
            .iter()
            .filter(|e| e.id.as_deref() == Some(tx.id.as_str()))
            .count();
        anyhow::ensure!(applied == 1, "{} in the history {applied} times", tx.id);
    }
    Ok(())
}
