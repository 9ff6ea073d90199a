//! The Grafana dashboard against real data: Debian's Prometheus scrapes a
//! live engine while transactions, a poison record, a stalled record and a
//! refused publish happen, and every query of the dashboard must return at
//! least one series.

use std::time::{Duration, Instant};

use harness::infra::process::{free_port, Supervised};
use harness::stack::Stack;
use reqwest::StatusCode;
use serde_json::{json, Value};
use txengine::publisher::{Publisher, PublisherSettings};

use crate::{isolated_store, post_on_broken_account, repair_account};

fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/dashboards/txengine.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// Starts Prometheus scraping `target` (host:port) every second.
fn start_prometheus(target: &str, dir: &std::path::Path) -> (Supervised, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: txengine\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let mut command = std::process::Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"));
    let process = Supervised::spawn("prometheus", command, &dir.join("prometheus.log"))
        .expect("prometheus starts (scripts/install-deps installs it)");
    (process, format!("http://{listen}"))
}

/// Series the query returns now (an error answer counts as none).
async fn series(http: &reqwest::Client, prometheus: &str, query: &str) -> usize {
    let url =
        reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), [("query", query)])
            .unwrap();
    let Ok(response) = http.get(url).send().await else {
        return 0;
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["data"]["result"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_returns_data_from_a_live_engine() {
    let infra = crate::infra();
    let s = Stack::start(infra, "observed").await.unwrap();
    s.set_balance("acct", 1_000_000).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_prometheus, prometheus) =
        start_prometheus(s.url.trim_start_matches("http://"), dir.path());

    // A poison record (DLQ), a record Redis refuses until it is fixed (Redis
    // errors), and a publish refused for a full queue.
    crate::publish_raw(&s, "acct", b"not a record").await;
    post_on_broken_account(&s, "refused", "broken").await;
    // A 401 (no key), a 403 (out of scope) and a 429 (a key with burst 1).
    let keyless = reqwest::Client::new();
    let response = keyless.get(s.url("/balance/acct")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let narrow = s.create_key(&["other"], Some(1), Some(1)).await.unwrap();
    let narrow = s.with_api_key(&narrow.secret).unwrap();
    assert_eq!(
        narrow.get("/balance/acct").await.unwrap().0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        narrow.get("/balance/other").await.unwrap().0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = narrow.get("/balance/other").await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let full = Publisher::new(PublisherSettings {
        brokers: &infra.kafka_brokers,
        topic: &s.config.topic,
        max_in_flight: 0,
        publish_timeout: Duration::from_secs(5),
        linger: Duration::from_millis(1),
    })
    .unwrap();
    let store = isolated_store(&s.config.namespace, &infra.redis_url).await;
    let posted =
        txengine::http::decode_transaction(br#"{"id":"full","account":"acct","amount":1}"#, None)
            .unwrap();
    let admitted = crate::admission_of(store, full, 1)
        .admit(crate::any_account_key(), vec![posted])
        .await;
    assert!(admitted.answers[0].is_err(), "{admitted:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    repair_account(&s, "broken", 1).await;

    // Steady traffic while Prometheus scrapes, until every query has data.
    let mut queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    // Counted, not only registered: the debits below write history, and
    // each writes an outcome event.
    for (title, query) in [
        (
            "history entries counted",
            "sum(txengine_history_entries_total) > 0",
        ),
        (
            "outcome events counted",
            "sum(txengine_outcome_events_total) > 0",
        ),
    ] {
        queries.push((title.to_owned(), query.to_owned()));
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        for _ in 0..20 {
            n += 1;
            let (status, body) = s
                .post(&json!({"id": format!("t-{n}"), "account": "acct", "amount": 1}))
                .await
                .unwrap();
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
        let mut empty = Vec::new();
        for (title, query) in &queries {
            if series(&http, &prometheus, query).await == 0 {
                empty.push(format!("{title}: {query}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data after 60 s of scraping:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.stop().await.unwrap();
}
