//! Limits under abuse, over raw TCP so the requests can be as broken as a
//! hostile or careless client makes them: each limit's answer, nothing
//! written for a refused request, and the engine's memory flat afterwards.

use std::time::Duration;

use harness::infra::LocalService;
use harness::stack::{isolated_config, EngineProcess, Stack};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use txengine::admission::Refused;
use txengine::limits::MAX_BODY_BYTES;
use txengine::publisher::{Publisher, PublisherSettings};
use txengine::store::{Store, StoreSettings};
use txengine::Config;

/// `host:port` of a base URL.
fn addr(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Sends `head` (and `body`) on a new connection and reads the answer until
/// the server closes the connection or `wait` passes: (status, everything read).
async fn exchange(url: &str, head: &str, body: &[u8], wait: Duration) -> (Option<u16>, String) {
    let mut stream = TcpStream::connect(addr(url)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before it has read all we send.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok());
    (status, text)
}

fn post_head(extra: &str, content_length: Option<usize>) -> String {
    let length = content_length
        .map(|n| format!("Content-Length: {n}\r\n"))
        .unwrap_or_else(|| "Transfer-Encoding: chunked\r\n".to_owned());
    format!(
        "POST /transactions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{length}{extra}Connection: close\r\n\r\n"
    )
}

fn vm_rss_kib(pid: u32) -> u64 {
    harness::report::rss_kib(pid).expect("the engine runs").0
}

async fn engine_process(name: &str, tune: impl FnOnce(&mut Config)) -> EngineProcess {
    let mut config = with_limits(name, tune);
    let port = harness::infra::process::free_port().unwrap();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    EngineProcess::spawn(env!("CARGO_BIN_EXE_harness").as_ref(), config)
        .await
        .expect("engine process starts")
}

/// Oversized heads (431), oversized bodies with and without a declared
/// length (413), then waves of concurrent slow heads and slow bodies (408):
/// every one refused, nothing accepted, and the engine's resident memory
/// about where it started.
#[tokio::test(flavor = "multi_thread")]
async fn abuse_is_refused_and_memory_stays_flat() {
    let engine = engine_process("abuse", |c| {
        c.header_read_timeout_ms = 300;
        c.body_read_timeout_ms = 300;
    })
    .await;
    let pid = engine.pid().unwrap();
    // Its log goes to a file: plain text, no terminal colour codes.
    let log = engine.log_tail(50);
    assert!(log.contains("api listening"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
    // A valid key, so the body limits (not the 401) answer.
    let key = engine.api().unwrap().with_new_key().await.unwrap().api_key;
    let auth = format!("Authorization: Bearer {}\r\n", key.unwrap());
    let big_header = format!("X-Filler: {}\r\n", "h".repeat(64 * 1024));
    let big_body = vec![b' '; 4 * MAX_BODY_BYTES];
    let chunked_body = {
        let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
        chunk.repeat(8) + "0\r\n\r\n"
    };
    let wait = Duration::from_secs(5);
    // Warm up allocator pools and the runtime before the baseline.
    for _ in 0..50 {
        exchange(&engine.url, &post_head(&big_header, Some(2)), b"{}", wait).await;
    }
    let before = vm_rss_kib(pid);
    for round in 0..300 {
        let (status, text) =
            exchange(&engine.url, &post_head(&big_header, Some(2)), b"{}", wait).await;
        assert_eq!(status, Some(431), "round {round}: {text}");
        let (status, text) = exchange(
            &engine.url,
            &post_head(&auth, Some(big_body.len())),
            &big_body,
            wait,
        )
        .await;
        assert_eq!(status, Some(413), "round {round}: {text}");
        assert!(text.contains("urn:txengine:problem:too-large"), "{text}");
        let (status, text) = exchange(
            &engine.url,
            &post_head(&auth, None),
            chunked_body.as_bytes(),
            wait,
        )
        .await;
        assert_eq!(status, Some(413), "round {round}: {text}");
    }
    for wave in 0..3 {
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (url, auth) = (engine.url.clone(), auth.clone());
            clients.spawn(async move {
                if i % 2 == 0 {
                    // Half a head, then silence: the connection is closed.
                    exchange(
                        &url,
                        "POST /transactions HTTP/1.1\r\nHost: t\r\n",
                        b"",
                        wait,
                    )
                    .await
                    .0
                } else {
                    // A whole head, half a body: 408.
                    exchange(&url, &post_head(&auth, Some(100)), b"{\"account\":", wait)
                        .await
                        .0
                }
            });
        }
        let answers = clients.join_all().await;
        let timeouts = answers.iter().filter(|a| **a == Some(408)).count();
        assert_eq!(
            timeouts, 100,
            "wave {wave}: slow bodies answered {answers:?}"
        );
    }
    let after = vm_rss_kib(pid);
    eprintln!("engine resident memory: {before} KiB before the abuse, {after} KiB after");
    assert!(
        after < before + 16 * 1024,
        "resident memory grew from {before} KiB to {after} KiB over 900 oversized requests and 600 slow clients"
    );
    let client = reqwest::Client::new();
    let metrics = client
        .get(format!("{}/metrics", engine.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("status=\"431\"") || metrics.contains("status=\"413\""),
        "the refusals are counted: {metrics}"
    );
    assert!(
        !metrics.contains("status=\"202\""),
        "nothing may have been accepted: {metrics}"
    );
    // The consumer says when it got its partitions.
    let log = engine.log_tail(500);
    assert!(log.contains("partitions assigned"), "{log}");
}

fn with_limits(name: &str, tune: impl FnOnce(&mut Config)) -> Config {
    let mut config = isolated_config(crate::infra(), name);
    tune(&mut config);
    config
}

/// A client that never finishes its headers, or sits idle on an open
/// connection, is disconnected after the header deadline.
#[tokio::test]
async fn slow_or_idle_headers_are_cut_off() {
    let s = Stack::start_with(with_limits("slowhead", |c| c.header_read_timeout_ms = 300))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (_, text) = exchange(
        &s.url,
        "POST /transactions HTTP/1.1\r\nHost: test\r\n",
        b"",
        Duration::from_secs(10),
    )
    .await;
    let cut_after = started.elapsed();
    assert!(
        cut_after < Duration::from_secs(5),
        "half a head was kept {cut_after:?}: {text}"
    );
    let started = std::time::Instant::now();
    exchange(&s.url, "", b"", Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle connection kept"
    );
    s.stop().await.unwrap();
}

/// A body that does not arrive in time is 408 and nothing is recorded.
#[tokio::test]
async fn slow_body_is_408_and_records_nothing() {
    let s = Stack::start_with(with_limits("slowbody", |c| c.body_read_timeout_ms = 300))
        .await
        .unwrap();
    s.set_balance("acct", 100).await.unwrap();
    let body = json!({"id": "slow-1", "account": "acct", "amount": 1}).to_string();
    let half = &body.as_bytes()[..body.len() / 2];
    let (status, text) = exchange(
        &s.url,
        &post_head(
            &format!("Authorization: Bearer {}\r\n", s.api_key.as_ref().unwrap()),
            Some(body.len()),
        ),
        half,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, Some(408), "{text}");
    assert!(text.contains("urn:txengine:problem:body-timeout"), "{text}");
    let (status, _) = s.get("/transactions/slow-1").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The same id sent whole is then accepted: the slow attempt held no claim.
    let (status, _) = s.post(&serde_json::from_str(&body).unwrap()).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    s.stop().await.unwrap();
}

/// Past the connection cap, a new connection waits (in the kernel's
/// backlog) and is served as soon as another one closes.
#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let s = Stack::start_with(with_limits("conncap", |c| {
        c.max_connections = 2;
        c.header_read_timeout_ms = 20_000;
    }))
    .await
    .unwrap();
    let first = TcpStream::connect(addr(&s.url)).await.unwrap();
    let _second = TcpStream::connect(addr(&s.url)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = "GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let url = s.url.clone();
    let third = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (status, _) = exchange(&url, health, b"", Duration::from_secs(10)).await;
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the cap of 2"
    );
    drop(first);
    let (status, waited) = third.await.unwrap();
    assert_eq!(status, Some(200));
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    s.stop().await.unwrap();
}

/// A Redis that stops answering mid-request (SIGSTOP, not a closed port):
/// the API answers 503 within its Redis timeout, writes nothing, and the
/// same request succeeds once Redis is back.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_redis_is_503_then_recovers() {
    crate::infra();
    let mut redis = harness::infra::LocalRedis::start("always").unwrap();
    let s = Stack::start_with(with_limits("stall", |c| {
        c.redis_url = redis.url();
        c.redis_timeout_ms = 500;
    }))
    .await
    .unwrap();
    s.set_balance("acct", 10).await.unwrap();
    let pid = Pid::from_raw(redis.pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let request = json!({"id": "stall-1", "account": "acct", "amount": 3});
    let started = std::time::Instant::now();
    let (status, problem) = s.post(&request).await.unwrap();
    let answered_after = started.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert!(
        answered_after < Duration::from_secs(10),
        "{answered_after:?}"
    );
    let (status, body) = s.post(&request).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let settled = s
        .wait_settled(&["stall-1".into()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(settled["stall-1"]["balance_after"], 7);
    s.stop().await.unwrap();
}

/// A batch of captures and voids while Redis stops answering: no hold's
/// terms can be read, so no item can be taken, and the batch as a whole is
/// a 503 with Retry-After (not a 200 of items each `unavailable`). The key
/// is in the API's cache, so the refusal is the holds' read, not the key's.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_holds_cannot_be_read_is_503() {
    crate::infra();
    let mut redis = harness::infra::LocalRedis::start("always").unwrap();
    let s = Stack::start_with(with_limits("holds503", |c| {
        c.redis_url = redis.url();
        c.redis_timeout_ms = 300;
        c.key_cache_ms = txengine::limits::MAX_KEY_CACHE_MS;
    }))
    .await
    .unwrap();
    let items = vec![
        json!({"id": "c-1", "type": "capture", "hold": "h-1"}),
        json!({"id": "v-1", "type": "void", "hold": "h-2"}),
    ];
    // Answered while Redis runs (the holds are unknown), and the key cached.
    let (status, answer) = s.post_batch(&items).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    let pid = Pid::from_raw(redis.pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let response = s
        .http
        .post(s.url("/transactions/batch"))
        .json(&json!({ "transactions": items }))
        .send()
        .await;
    kill(pid, Signal::SIGCONT).unwrap();
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    s.stop().await.unwrap();
}

/// A Kafka broker that stops answering mid-publish (SIGSTOP), with a lease
/// shorter than the publish timeout. Two interleavings, each of which once
/// let an id be applied with a body its client never got 202 for:
/// (a) the lease ends during a slow publish and another body asks for the
///     id: it is 422, and the first request still gets its 202;
/// (b) the publish times out (503) and another body asks for the id while
///     the first record may still land: 422 again. The first body's retry
///     is accepted once the broker is back, and each id is applied once,
///     with the body that got the 202.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_kafka_never_rebinds_an_id() {
    crate::infra();
    let mut kafka = tokio::task::spawn_blocking(harness::infra::LocalKafka::start)
        .await
        .unwrap()
        .expect("a second Kafka starts");
    let s = std::sync::Arc::new(
        Stack::start_with(with_limits("kstall", |c| {
            c.kafka_brokers = kafka.brokers();
            c.publish_timeout_ms = 5_000;
            c.lease_ms = 500;
        }))
        .await
        .unwrap(),
    );
    s.set_balance("acct", 10).await.unwrap();
    let (status, _) = s
        .post(&json!({"id": "warm", "type": "credit", "account": "acct", "amount": 1}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let pid = Pid::from_raw(kafka.pid().unwrap() as i32);
    let other_body = |id: &str| json!({"id": id, "type": "credit", "account": "acct", "amount": 4});

    // (a) The broker stalls for 1.2 s: past the lease, well within the timeout
    // (a broker slow to wake under load must not turn the 202 into a 503).
    let first_a = json!({"id": "ka", "account": "acct", "amount": 3});
    kill(pid, Signal::SIGSTOP).unwrap();
    let slow = tokio::spawn({
        let (s, body) = (s.clone(), first_a.clone());
        async move { s.post(&body).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rival = tokio::spawn({
        let (s, body) = (s.clone(), other_body("ka"));
        async move { s.post(&body).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill(pid, Signal::SIGCONT).unwrap();
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "the slow publish: {body}");
    let (status, body) = rival.await.unwrap().unwrap();
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another body: {body}"
    );

    // (b) The broker stalls past the publish timeout.
    let first_b = json!({"id": "kb", "account": "acct", "amount": 2});
    kill(pid, Signal::SIGSTOP).unwrap();
    let answer = s.post(&first_b).await;
    let rival = s.post(&other_body("kb")).await;
    kill(pid, Signal::SIGCONT).unwrap();
    let (status, problem) = answer.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    let (status, body) = rival.unwrap();
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another body after a 503: {body}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = s.post(&first_b).await.unwrap();
        if status == StatusCode::ACCEPTED || status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retries still refused: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, body) = s.post(&other_body("kb")).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let ids = ["warm".to_owned(), "ka".to_owned(), "kb".to_owned()];
    let settled = s.wait_settled(&ids, Duration::from_secs(60)).await.unwrap();
    assert_eq!(settled["ka"]["status"], "applied");
    assert_eq!(settled["kb"]["status"], "applied");
    assert_eq!(
        s.balance("acct").await.unwrap(),
        Some(6),
        "10 + 1 - 3 - 2, each once, no credit of 4"
    );
    match std::sync::Arc::try_unwrap(s) {
        Ok(s) => s.stop().await.unwrap(),
        Err(_) => panic!("a request task still holds the stack"),
    }
}

/// While Redis stalls, every request whose claim timed out leaves a lease to
/// release in the background; no more than the cap are retried at once, and
/// they end once Redis is back.
#[tokio::test(flavor = "multi_thread")]
async fn background_releases_are_capped() {
    let infra = crate::infra();
    let mut redis = harness::infra::LocalRedis::start("always").unwrap();
    let store = Store::connect(StoreSettings {
        topology: txengine::config::RedisTopology::Single,
        url: &redis.url(),
        namespace: "cap",
        outcome_ttl_secs: 60,
        history_keep_secs: 60,
        lease_ms: 10_000,
        response_timeout: Duration::from_millis(300),
        default_asset: Default::default(),
    })
    .await
    .unwrap();
    let publisher = Publisher::new(PublisherSettings {
        brokers: &infra.kafka_brokers,
        topic: "unused",
        max_in_flight: 10,
        publish_timeout: Duration::from_secs(5),
        linger: Duration::from_millis(1),
    })
    .unwrap();
    let admission = crate::admission_of(store, publisher, 2);
    let pid = Pid::from_raw(redis.pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    for i in 0..5 {
        let body = format!(r#"{{"id":"cap-{i}","account":"acct","amount":1}}"#);
        let posted = txengine::http::decode_transaction(body.as_bytes(), None).unwrap();
        let admitted = admission
            .admit(crate::any_account_key(), vec![posted])
            .await;
        let refused = &admitted.answers[0];
        assert!(matches!(refused, Err(Refused::Redis(_))), "{refused:?}");
    }
    let pending = admission.background_releases();
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(pending, 2, "releases in the background past the cap");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while admission.background_releases() > 0 {
        assert!(std::time::Instant::now() < deadline, "releases never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The consumers fall behind (a partition stalls on a record Redis
/// refuses, and records pile up behind it): once the backlog reaches its
/// bound, the API takes nothing new, single or batch (503 + Retry-After,
/// nothing claimed), and `/ready` says so; once the consumers catch up,
/// the same request is accepted and applied once.
#[tokio::test(flavor = "multi_thread")]
async fn past_the_backlog_bound_nothing_new_is_taken() {
    let s = Stack::start_with(with_limits("shed", |c| c.max_backlog_records = 10))
        .await
        .unwrap();
    s.set_balance("acct", 100).await.unwrap();
    crate::post_on_broken_account(&s, "stuck", "broken").await;
    for i in 0..12 {
        let record = txengine::wire::Record {
            tx: txengine::domain::Transaction {
                asset: None,
                metadata: Default::default(),
                id: txengine::domain::TxId::parse(&format!("behind-{i}")).unwrap(),
                movement: txengine::domain::Movement::Credit {
                    account: txengine::domain::AccountId::parse("broken").unwrap(),
                    amount: txengine::domain::Amount::new(1).unwrap(),
                },
            },
            accepted_at_ms: 1,
            saga: None,
        };
        crate::publish_raw(&s, "broken", &record.encode()).await;
    }
    let ready = crate::pipeline::wait_ready_until(&s, "shedding shown", |status, body| {
        status == StatusCode::SERVICE_UNAVAILABLE && body["backlog"]["shedding"] == true
    })
    .await;
    assert!(
        ready["backlog"]["records"].as_u64().unwrap() >= 10,
        "{ready}"
    );

    let body = json!({"id": "shed-1", "account": "acct", "amount": 1});
    let response = s
        .http
        .post(s.url("/transactions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:txengine:problem:overloaded",
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("behind"),
        "{problem}"
    );
    let (status, answer) = s.post_batch(std::slice::from_ref(&body)).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(
        answer["type"], "urn:txengine:problem:overloaded",
        "{answer}"
    );
    let (status, _) = s.get("/transactions/shed-1").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing claimed");

    crate::repair_account(&s, "broken", 5).await;
    crate::pipeline::wait_ready_until(&s, "caught up", |status, body| {
        status == StatusCode::OK && body["backlog"]["shedding"] == false
    })
    .await;
    let (status, answer) = s.post(&body).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let settled = s
        .wait_settled(&["shed-1".into()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(settled["shed-1"]["balance_after"], 99);
    s.stop().await.unwrap();
}
