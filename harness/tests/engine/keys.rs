//! API keys, scopes and the rate limiter, against the real engine: the
//! admin's key endpoints, 401/403/429 with nothing claimed, published or
//! written, GCRA exact under concurrency and shared by two API processes,
//! revocation everywhere within 1 s, 503 (never unlimited) without Redis,
//! the limiter on a Redis Cluster, and no secret in logs or Redis.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::client::ApiClient;
use harness::infra::{Infra, LocalService};
use harness::stack::{isolated_config, EngineProcess, Stack};
use reqwest::StatusCode;
use serde_json::{json, Value};
use txengine::store::Layout;

/// Records in the topic, over every partition.
fn topic_size(brokers: &str, topic: &str) -> i64 {
    harness::measure::topic_size(brokers, topic).unwrap()
}

/// Every key of the namespace with a dump of its value, on one Redis.
async fn redis_contents(redis_url: &str, namespace: &str) -> Vec<(String, String)> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{namespace}}}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut all = Vec::new();
    for name in names {
        let kind: String = redis::cmd("TYPE")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value: Value = match kind.as_str() {
            "string" => json!(redis::cmd("GET")
                .arg(&name)
                .query_async::<String>(&mut conn)
                .await
                .unwrap()),
            "hash" => json!(redis::cmd("HGETALL")
                .arg(&name)
                .query_async::<std::collections::HashMap<String, String>>(&mut conn)
                .await
                .unwrap()),
            "set" => json!(redis::cmd("SMEMBERS")
                .arg(&name)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .unwrap()),
            other => json!(other),
        };
        all.push((name, value.to_string()));
    }
    all
}

/// A client of `s`'s API that sends `secret` (or no key).
fn client_with(s: &Stack, secret: Option<&str>) -> ApiClient {
    let bare = ApiClient::new(&s.url, &s.admin_token, Duration::from_secs(30)).unwrap();
    match secret {
        Some(secret) => bare.with_api_key(secret).unwrap(),
        None => bare,
    }
}

async fn admin(
    s: &Stack,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().request(method, s.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, body)
}

#[tokio::test]
async fn the_admin_makes_lists_and_revokes_keys_and_sees_a_secret_once() {
    let s = Stack::start(crate::infra(), "keyadmin").await.unwrap();
    let token = s.admin_token.clone();
    let post = |body: Value, token: Option<String>| {
        let s = &s;
        async move {
            admin(
                s,
                reqwest::Method::POST,
                "/admin/keys",
                token.as_deref(),
                Some(body),
            )
            .await
        }
    };
    let (status, headers, made) = post(
        json!({"accounts": ["alice", "shop-*"], "rate_per_s": 5}),
        Some(token.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(headers["cache-control"], "no-store");
    let id = made["id"].as_str().unwrap().to_owned();
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(&format!("txk_{id}_")), "{secret}");
    assert_eq!(secret.len(), 4 + 16 + 1 + 64, "256 random bits in hex");
    assert_eq!(made["accounts"], json!(["alice", "shop-*"]));
    assert_eq!(
        (made["rate_per_s"].clone(), made["burst"].clone()),
        (json!(5), json!(5))
    );

    let (status, _, list) =
        admin(&s, reqwest::Method::GET, "/admin/keys", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&Value> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["id"] == id)
        .collect();
    assert_eq!(listed.len(), 1, "{list}");
    assert!(
        !list.to_string().contains(&secret[21..]),
        "a list shows no secret: {list}"
    );
    assert_eq!(listed[0]["accounts"], json!(["alice", "shop-*"]));
    assert!(listed[0].get("secret").is_none() && listed[0].get("hash").is_none());

    // Broken requests: 422 for rules, 400 for shapes; nothing is made.
    for (body, status) in [
        (
            json!({"accounts": ["a*b"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"accounts": []}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"accounts": ["*"], "burst": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"accounts": ["*"], "rate_per_s": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"accounts": ["*"], "rate_per_s": 1.5}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"accounts": ["*"], "rate_per_s": 1000001}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"accounts": "*"}), StatusCode::BAD_REQUEST),
        (
            json!({"accounts": ["*"], "admin": true}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (got, _, answer) = post(body.clone(), Some(token.clone())).await;
        assert_eq!(got, status, "{body} -> {answer}");
    }
    // Only the admin: no token 401, an API key or a wrong token 403.
    let (status, headers, _) = post(json!({"accounts": ["*"]}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    for wrong in [secret.clone(), "wrong".to_owned()] {
        let (status, _, _) = post(json!({"accounts": ["*"]}), Some(wrong.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) =
            admin(&s, reqwest::Method::GET, "/admin/keys", Some(&wrong), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let path = format!("/admin/keys/{id}");
        let (status, _, _) = admin(&s, reqwest::Method::DELETE, &path, Some(&wrong), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (_, _, list_after) =
        admin(&s, reqwest::Method::GET, "/admin/keys", Some(&token), None).await;
    assert_eq!(list_after, list, "refused requests made no key");

    let path = format!("/admin/keys/{id}");
    let (status, _, _) = admin(&s, reqwest::Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = admin(&s, reqwest::Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = admin(
        &s,
        reqwest::Method::DELETE,
        "/admin/keys/XYZ",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, _, list) = admin(&s, reqwest::Method::GET, "/admin/keys", Some(&token), None).await;
    assert!(
        !list.to_string().contains(&id),
        "revoked keys are not listed: {list}"
    );
    // Revoked on the process that revoked it: refused at once.
    let (status, _) = client_with(&s, Some(&secret))
        .get("/balance/alice")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.stop().await.unwrap();
}

/// Without a key, with a wrong or a malformed one, and out of scope: 401 or
/// 403, nothing claimed (no tx record), nothing published (the topic holds
/// exactly the accepted ones). Scopes: money moves out of or into matching
/// accounts only; a transfer may pay anyone; reads only matching balances
/// and transactions naming a matching account.
#[tokio::test]
async fn keys_and_scopes_guard_every_money_endpoint_and_refusals_write_nothing() {
    let s = Stack::start(crate::infra(), "scopes").await.unwrap();
    for account in ["alice", "bob", "shop-1"] {
        s.set_balance(account, 1_000).await.unwrap();
    }
    let scoped = s
        .create_key(&["alice", "shop-*"], None, None)
        .await
        .unwrap();
    let scoped_client = client_with(&s, Some(&scoped.secret));
    let tx = |id: &str, kind: &str, account: &str, to: Option<&str>| {
        let mut body = json!({"id": id, "type": kind, "account": account, "amount": 5});
        if let Some(to) = to {
            body["to"] = json!(to);
        }
        body
    };
    let mut wrong_secret = scoped.secret.clone();
    let flipped = if wrong_secret.ends_with('0') {
        "1"
    } else {
        "0"
    };
    wrong_secret.replace_range(wrong_secret.len() - 1.., flipped);
    let unknown = txengine::keys::generate().1;
    let mut refused_ids = Vec::new();
    for (n, (secret, status)) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(wrong_secret.as_str()), StatusCode::UNAUTHORIZED),
        (Some(unknown.as_str()), StatusCode::UNAUTHORIZED),
        (Some("txk_short"), StatusCode::UNAUTHORIZED),
        (Some(s.admin_token.as_str()), StatusCode::UNAUTHORIZED),
    ]
    .into_iter()
    .enumerate()
    {
        let client = client_with(&s, secret);
        let id = format!("unauth-{n}");
        let (got, body) = client.post(&tx(&id, "debit", "alice", None)).await.unwrap();
        assert_eq!(got, status, "{secret:?}: {body}");
        assert_eq!(body["type"], "urn:txengine:problem:unauthorized");
        for path in ["/balance/alice", "/transactions/x"] {
            assert_eq!(
                client.get(path).await.unwrap().0,
                status,
                "{path} {secret:?}"
            );
        }
        refused_ids.push(id);
    }
    // Out of scope: 403, before the body's id is claimed.
    for (id, kind, account, to) in [
        ("out-1", "debit", "bob", None),
        ("out-2", "credit", "bob", None),
        ("out-3", "transfer", "bob", Some("shop-1")),
        ("out-4", "transfer", "bob", Some("alice")),
    ] {
        let (status, body) = scoped_client
            .post(&tx(id, kind, account, to))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{id}: {body}");
        assert_eq!(body["type"], "urn:txengine:problem:forbidden");
        refused_ids.push(id.to_owned());
    }
    // In scope: debits and credits of matching accounts, transfers out of them to anyone.
    let accepted = [
        ("in-1", "debit", "alice", None),
        ("in-2", "credit", "shop-1", None),
        ("in-3", "transfer", "shop-1", Some("bob")),
    ];
    for (id, kind, account, to) in accepted {
        let (status, body) = scoped_client
            .post(&tx(id, kind, account, to))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{id}: {body}");
    }
    // Seed's path too.
    let response = scoped_client
        .http
        .post(s.url("/transaction"))
        .json(&tx("out-5", "debit", "bob", None))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    refused_ids.push("out-5".to_owned());
    // A transaction on bob only, made by the stack's key for every account.
    let (status, _) = s.post(&tx("bobs", "debit", "bob", None)).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);

    s.wait_settled(
        &["in-1".into(), "in-3".into(), "bobs".into()],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    // Reads: matching balances; transactions naming a matching account.
    assert_eq!(
        scoped_client.get("/balance/alice").await.unwrap().0,
        StatusCode::OK
    );
    assert_eq!(
        scoped_client.get("/balance/shop-9").await.unwrap().0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = scoped_client.get("/balance/bob").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        scoped_client.get("/transactions/in-3").await.unwrap().0,
        StatusCode::OK
    );
    // Out of scope reads as unknown: no oracle of which ids exist.
    let (status, hidden) = scoped_client.get("/transactions/bobs").await.unwrap();
    let (_, unknown) = scoped_client.get("/transactions/nope").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{hidden}");
    assert_eq!(
        hidden.to_string().replace("bobs", "nope"),
        unknown.to_string(),
        "the same answer as for an id never seen"
    );
    assert_eq!(
        scoped_client.get("/transactions/nope").await.unwrap().0,
        StatusCode::NOT_FOUND
    );
    let bob_key = s.create_key(&["bob"], None, None).await.unwrap();
    let bob = client_with(&s, Some(&bob_key.secret));
    // Paid to bob: bob's key sees that it was applied, not the source's
    // balance after it; the source's key sees that too.
    let (status, paid) = bob.get("/transactions/in-3").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid, json!({"id": "in-3", "status": "applied"}));
    let (_, whole) = scoped_client.get("/transactions/in-3").await.unwrap();
    assert!(whole["balance_after"].is_u64(), "{whole}");
    // The source's key sees what was asked; bob's (above) none of it.
    for (field, asked) in [("type", "transfer"), ("account", "shop-1"), ("to", "bob")] {
        assert_eq!(whole[field], asked, "{whole}");
    }
    assert!(whole["amount"].is_u64(), "{whole}");
    assert_eq!(
        bob.get("/transactions/in-1").await.unwrap().0,
        StatusCode::NOT_FOUND
    );

    s.wait_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        topic_size(&s.config.kafka_brokers, &s.config.topic),
        accepted.len() as i64 + 1,
        "only accepted transactions were published"
    );
    let contents = redis_contents(&s.config.redis_url, &s.config.namespace).await;
    let layout = Layout::new(&s.config.namespace, s.config.redis_topology);
    for id in &refused_ids {
        let key = layout.tx(id);
        assert!(
            !contents.iter().any(|(name, _)| *name == key),
            "{id} was claimed"
        );
    }
    assert_eq!(s.balance("bob").await.unwrap(), Some(1_000 + 5 - 5));
    s.stop().await.unwrap();
}

/// A key revoked while its request's body is on its way moves no money:
/// the headers arrive with a valid key, the key is revoked, and the body
/// that comes after the key cache's lifetime meets 401.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_while_the_body_is_on_its_way_moves_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Stack::start(crate::infra(), "revoke-body").await.unwrap();
    s.set_balance("acct", 100).await.unwrap();
    let key = s.create_key(&["*"], None, None).await.unwrap();
    let body = r#"{"id":"slow-body","account":"acct","amount":7}"#;
    let addr = s.url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /transactions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        key.secret,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.revoke_key(&key.id).await.unwrap();
    // Past --key-cache-ms (500 ms by default): every cache forgot the key.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(
        topic_size(&s.config.kafka_brokers, &s.config.topic),
        0,
        "nothing published"
    );
    assert_eq!(
        s.balance("acct").await.unwrap(),
        Some(100),
        "no money moved"
    );
    assert_eq!(
        s.get("/transactions/slow-body").await.unwrap().0,
        StatusCode::NOT_FOUND,
        "nothing claimed"
    );
    s.stop().await.unwrap();
}

/// The `remaining` a 2xx's `RateLimit` field gives (`"key";r=<n>;t=<s>`).
fn remaining(headers: &reqwest::header::HeaderMap) -> u64 {
    let field = headers["ratelimit"].to_str().unwrap();
    field
        .split(';')
        .find_map(|part| part.strip_prefix("r="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no r= in {field}"))
}

/// Redis's clock, in microseconds.
async fn redis_time_us(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    secs * 1_000_000 + micros
}

/// 160 concurrent requests of one key (1 per second, burst 40) spread over
/// two API processes on one Redis: exactly the burst is allowed, plus one
/// per whole second the burst took (Redis's clock, read around it), each
/// allowed answer a different `remaining`, every other answer 429 with
/// Retry-After and the RateLimit fields, and nothing published for those.
#[tokio::test(flavor = "multi_thread")]
async fn gcra_is_exact_under_concurrency_and_two_api_processes_share_it() {
    let first = Stack::start(crate::infra(), "gcra").await.unwrap();
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.role = txengine::Role::Api;
    let second = Stack::start_with(config).await.unwrap();
    for i in 0..4 {
        first
            .set_balance(&format!("acct-{i}"), 1_000_000)
            .await
            .unwrap();
    }
    const BURST: u64 = 40;
    let key = first
        .create_key(&["*"], Some(1), Some(BURST))
        .await
        .unwrap();
    let clients = [
        client_with(&first, Some(&key.secret)),
        client_with(&second, Some(&key.secret)),
    ];
    // Both processes have the key cached before the burst (two of its 40).
    let began = redis_time_us(&first.config.redis_url).await;
    for client in &clients {
        assert_eq!(
            client.get("/balance/unknown").await.unwrap().0,
            StatusCode::NOT_FOUND
        );
    }
    let spent_before = 2;
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..160 {
        let client = clients[n % 2].clone();
        requests.spawn(async move {
            let body = json!({"id": format!("burst-{n}"), "account": format!("acct-{}", n % 4), "amount": 1});
            let response = client.http.post(client.url("/transactions")).json(&body).send().await.unwrap();
            (format!("burst-{n}"), response.status(), response.headers().clone())
        });
    }
    let answers = requests.join_all().await;
    let ended = redis_time_us(&first.config.redis_url).await;
    let whole_seconds = (ended - began) / 1_000_000;
    let allowed: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| status.is_success())
        .collect();
    let limited: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        allowed.len() + limited.len(),
        answers.len(),
        "only 2xx and 429"
    );
    let budget = BURST - spent_before;
    assert!(
        (budget..=budget + whole_seconds).contains(&(allowed.len() as u64)),
        "{} allowed; GCRA allows {budget} plus one per whole second of the {} µs burst",
        allowed.len(),
        ended - began
    );
    if whole_seconds == 0 {
        // Within one emission interval no count repeats, unless two
        // requests read the same state: the script would not be atomic.
        let remainders: BTreeSet<u64> = allowed.iter().map(|(_, _, h)| remaining(h)).collect();
        assert_eq!(
            remainders.len(),
            allowed.len(),
            "every allowed request saw its own remaining count"
        );
    }
    for (_, _, headers) in &limited {
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        assert_eq!(
            headers["ratelimit-policy"], "\"key\";q=1;w=1",
            "the policy is the rate (1 per second), not the burst"
        );
        assert!(headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"key\";r=0;t="));
    }
    first.wait_drained(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        topic_size(&first.config.kafka_brokers, &first.config.topic),
        allowed.len() as i64,
        "nothing published for a 429"
    );
    let layout = Layout::new(&first.config.namespace, first.config.redis_topology);
    let contents = redis_contents(&first.config.redis_url, &first.config.namespace).await;
    for (id, _, _) in &limited {
        assert!(
            !contents.iter().any(|(name, _)| *name == layout.tx(id)),
            "{id} was claimed"
        );
    }
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// A key used on two API processes (each has it cached) is revoked through
/// one: that one refuses it at once, the other within --key-cache-ms (at
/// most 1 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_is_refused_everywhere_within_a_second() {
    let first = Stack::start(crate::infra(), "revoke").await.unwrap();
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.role = txengine::Role::Api;
    let second = Stack::start_with(config).await.unwrap();
    first.set_balance("acct", 100).await.unwrap();
    let key = first.create_key(&["*"], None, None).await.unwrap();
    let clients = [
        client_with(&first, Some(&key.secret)),
        client_with(&second, Some(&key.secret)),
    ];
    for client in &clients {
        assert_eq!(client.get("/balance/acct").await.unwrap().0, StatusCode::OK);
    }
    first.revoke_key(&key.id).await.unwrap();
    let revoked_at = std::time::Instant::now();
    assert_eq!(
        clients[0].get("/balance/acct").await.unwrap().0,
        StatusCode::UNAUTHORIZED
    );
    // The contract's bound, counted from the revocation's answer.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(revoked_at.elapsed())).await;
    for client in &clients {
        assert_eq!(
            client.get("/balance/acct").await.unwrap().0,
            StatusCode::UNAUTHORIZED
        );
        let (status, _) = client
            .post(&json!({"account": "acct", "amount": 1}))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// Redis gone: a limited key's requests are 503 (the limiter cannot count
/// them), never let through; after Redis is back, they pass again.
#[tokio::test(flavor = "multi_thread")]
async fn without_redis_the_limiter_answers_503_never_unlimited() {
    let mut redis = harness::infra::LocalRedis::start("always").unwrap();
    let mut config = isolated_config(crate::infra(), "limiter503");
    config.redis_url = redis.url();
    // Short, so the request after the kill fails fast; not so short that
    // a busy machine's Redis misses it while alive.
    config.redis_timeout_ms = 1_500;
    // No consumer: it would only retry against the dead Redis.
    config.role = txengine::Role::Api;
    let s = Stack::start_with(config).await.unwrap();
    s.set_balance("acct", 100).await.unwrap();
    let key = s.create_key(&["*"], Some(1000), None).await.unwrap();
    let client = client_with(&s, Some(&key.secret));
    assert_eq!(client.get("/balance/acct").await.unwrap().0, StatusCode::OK);
    tokio::task::block_in_place(|| redis.kill());
    // The key is still cached; only the limiter needs Redis now.
    let response = client
        .http
        .post(client.url("/transactions"))
        .json(&json!({"account": "acct", "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    s.stop().await.unwrap();
}

/// On a Redis Cluster the limiter's key lives in its own slot: a burst of 5
/// passes, the 6th is 429.
#[tokio::test(flavor = "multi_thread")]
async fn the_limiter_works_on_a_redis_cluster() {
    let s = Stack::start(Infra::shared_cluster(), "clusterlimit")
        .await
        .unwrap();
    s.set_balance("acct", 100).await.unwrap();
    let key = s.create_key(&["acct"], Some(1), Some(5)).await.unwrap();
    let client = client_with(&s, Some(&key.secret));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(client.get("/balance/acct").await.unwrap().0);
    }
    assert_eq!(&statuses[..5], &[StatusCode::OK; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    let layout = Layout::new(&s.config.namespace, s.config.redis_topology);
    assert!(layout
        .rate(&key.id)
        .starts_with(&format!("{{{}:", s.config.namespace)));
    s.stop().await.unwrap();
}

/// An engine process logging at debug: after keys are made, used, used
/// wrongly and revoked, neither its log nor Redis holds a secret (Redis
/// holds its SHA-256).
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs_or_redis() {
    let mut config = isolated_config(crate::infra(), "nosecret");
    config.listen = format!(
        "127.0.0.1:{}",
        harness::infra::process::free_port().unwrap()
    )
    .parse()
    .unwrap();
    let engine = EngineProcess::spawn_with_env(
        env!("CARGO_BIN_EXE_harness").as_ref(),
        config.clone(),
        &[("RUST_LOG", "debug")],
    )
    .await
    .unwrap();
    let api = engine.api().unwrap();
    api.set_balance("acct", 100).await.unwrap();
    let kept = api.create_key(&["acct"], Some(100), None).await.unwrap();
    let revoked = api.create_key(&["*"], None, None).await.unwrap();
    for secret in [&kept.secret, &revoked.secret] {
        let client = api.with_api_key(secret).unwrap();
        client
            .post(&json!({"account": "acct", "amount": 1}))
            .await
            .unwrap();
        client.get("/balance/other").await.unwrap();
    }
    api.revoke_key(&revoked.id).await.unwrap();
    let wrong = format!("{}0", &kept.secret[..kept.secret.len() - 1]);
    api.with_api_key(&wrong)
        .unwrap()
        .get("/balance/acct")
        .await
        .unwrap();
    let log = engine.log_tail(100_000);
    assert!(log.contains("api key created"), "the log is read: {log}");
    let contents = redis_contents(&config.redis_url, &config.namespace).await;
    let dump = format!("{contents:?}");
    assert!(
        dump.contains(&txengine::keys::hash_secret(&kept.secret)),
        "Redis is read: {dump}"
    );
    for secret in [&kept.secret, &revoked.secret, &wrong] {
        // The random part: the id before it is public.
        let random = &secret[21..];
        assert!(!log.contains(random), "a secret in the log");
        assert!(!dump.contains(random), "a secret in Redis");
    }
    engine.terminate(Duration::from_secs(10));
}

/// Concurrent single requests' claims gathered into one call (one script
/// on one Redis; keys counted, then one call per slot, on a cluster): each
/// answered as if it came alone, in order: a key of burst 2 lets its first
/// two go and the third is `RateLimited` with nothing written for it; a
/// request without a limit is claimed with no verdict; the same id twice
/// is claimed by the first and found in flight by the second; another
/// body of a claimed id is a conflict.
#[rstest::rstest]
#[case::single(txengine::config::RedisTopology::Single)]
#[case::cluster(txengine::config::RedisTopology::Cluster)]
#[tokio::test(flavor = "multi_thread")]
async fn gathered_claims_are_each_what_one_claim_would_be(
    #[case] topology: txengine::config::RedisTopology,
) {
    use txengine::domain::{AccountId, Amount, Movement, Transaction, TxId};
    use txengine::keys::RateLimit;
    use txengine::store::{Claim, ClaimRequest, Store};
    let infra = crate::infra_of(topology);
    let namespace = format!("gathered-{}", uuid::Uuid::new_v4().simple());
    let store = crate::isolated_store_on(infra, &namespace).await;
    let tx = |id: &str, amount: u64| Transaction {
        asset: None,
        metadata: Default::default(),
        id: TxId::parse(id).unwrap(),
        movement: Movement::new(
            txengine::domain::Kind::Debit,
            AccountId::parse("acct").unwrap(),
            None,
            Amount::new(amount).unwrap(),
        )
        .unwrap(),
    };
    let txs = [
        tx("k-1", 1),
        tx("k-2", 1),
        tx("free", 1),
        tx("k-3", 1),
        tx("twice", 1),
        tx("twice", 1),
        tx("bound", 1),
        tx("bound", 2),
    ];
    let (key, _) = txengine::keys::generate();
    let limit = RateLimit {
        rate_per_s: 1,
        burst: 2,
    };
    let limited = |index: usize| !matches!(index, 2 | 4..);
    // Each transaction a single request of its own, gathered into one call.
    let singles: Vec<[(Transaction, String); 1]> = txs
        .iter()
        .map(|tx| [(tx.clone(), Store::lease_token())])
        .collect();
    let requests: Vec<ClaimRequest> = singles
        .iter()
        .enumerate()
        .map(|(index, items)| ClaimRequest {
            limit: limited(index).then_some((&key, limit)),
            items,
        })
        .collect();
    let answers = store.claim_requests(&requests).await;
    let claims: Vec<&Claim> = answers
        .iter()
        .map(|answer| answer.claims[0].as_ref().unwrap())
        .collect();
    assert_eq!(
        claims,
        [
            &Claim::Claimed,
            &Claim::Claimed,
            &Claim::Claimed,
            &Claim::RateLimited,
            &Claim::Claimed,
            &Claim::InFlight,
            &Claim::Claimed,
            &Claim::Conflict,
        ],
        "{answers:?}"
    );
    for (index, answer) in answers.iter().enumerate() {
        match answer.rate {
            Some(rate) => {
                assert!(
                    limited(index),
                    "a verdict for an unlimited claim: {answers:?}"
                );
                assert_eq!(rate.allowed, index != 3, "{answers:?}");
            }
            None => assert!(!limited(index), "no verdict for a limited one: {answers:?}"),
        }
    }
    let refused = crate::claim_unlimited(&store, &[(txs[3].clone(), "another token".into())]).await;
    assert_eq!(
        crate::each_ok(refused),
        [Claim::Claimed],
        "the rate-limited claim wrote nothing: its id is free"
    );

    // A request of three items on a key that lets two go: the first two are
    // claimed, the third is limited and its id stays free.
    let (batch_key, _) = txengine::keys::generate();
    let batch: Vec<(Transaction, String)> = ["b-1", "b-2", "b-3"]
        .into_iter()
        .map(|id| (tx(id, 1), Store::lease_token()))
        .collect();
    let request = ClaimRequest {
        limit: Some((&batch_key, limit)),
        items: &batch,
    };
    let answer = store.claim_requests(&[request]).await.pop().unwrap();
    assert_eq!(
        crate::each_ok(answer.claims),
        [Claim::Claimed, Claim::Claimed, Claim::RateLimited]
    );
    let rate = answer.rate.unwrap();
    assert_eq!((rate.allowed, rate.granted), (true, 2), "{rate:?}");
    let free = crate::claim_unlimited(&store, &[(tx("b-3", 1), "another token".into())]).await;
    assert_eq!(crate::each_ok(free), [Claim::Claimed]);
}

/// On a Redis Cluster a slot whose call fails (here a tx record that is
/// not a hash, so its script errs: as a lost master would, for its slot)
/// fails its own claims only, and a key that cannot be counted fails its
/// own requests only: the other gathered requests, in other slots and of
/// other keys, are claimed.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_a_failing_slot_or_key_fails_only_its_own_claims() {
    use txengine::config::RedisTopology;
    use txengine::domain::{AccountId, Amount, Movement, Transaction, TxId};
    use txengine::keys::RateLimit;
    use txengine::store::{Claim, ClaimRequest, Connection, Store};
    let infra = Infra::shared_cluster();
    let namespace = format!("isolated-{}", uuid::Uuid::new_v4().simple());
    let store = crate::isolated_store_on(infra, &namespace).await;
    let layout = store.layout();
    let tx = |id: &str| Transaction {
        asset: None,
        metadata: Default::default(),
        id: TxId::parse(id).unwrap(),
        movement: Movement::new(
            txengine::domain::Kind::Debit,
            AccountId::parse("acct").unwrap(),
            None,
            Amount::new(1).unwrap(),
        )
        .unwrap(),
    };
    // Two ids in different shards, so in different script calls.
    let broken = "p-0".to_owned();
    let healthy = (1..)
        .map(|i| format!("p-{i}"))
        .find(|id| layout.shard_of(id) != layout.shard_of(&broken))
        .unwrap();
    let conn = Connection::open(
        &infra.redis_url,
        RedisTopology::Cluster,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (good_key, _) = txengine::keys::generate();
    let (bad_key, _) = txengine::keys::generate();
    let poison = |key: String, owner: &str| {
        let mut set = redis::cmd("RPUSH");
        set.arg(key).arg("x");
        (layout.shard_of(owner), set)
    };
    let commands = vec![
        poison(layout.tx(&broken), &broken),
        poison(layout.rate(bad_key.as_str()), bad_key.as_str()),
    ];
    let _: Vec<i64> = conn.run_by_slot(commands).await.unwrap();

    let txs = [tx(&broken), tx(&healthy), tx("q-1")];
    let items: Vec<(Transaction, String)> = txs
        .iter()
        .map(|tx| (tx.clone(), Store::lease_token()))
        .collect();
    let claims = crate::claim_unlimited(&store, &items[..2]).await;
    assert!(claims[0].is_err(), "{claims:?}");
    assert_eq!(claims[1].as_ref().unwrap(), &Claim::Claimed, "{claims:?}");

    let limit = RateLimit {
        rate_per_s: 100,
        burst: 100,
    };
    let gathered = [
        ClaimRequest {
            limit: Some((&bad_key, limit)),
            items: &items[2..3],
        },
        ClaimRequest {
            limit: Some((&good_key, limit)),
            items: &items[1..2],
        },
    ];
    let answers = store.claim_requests(&gathered).await;
    assert!(answers[0].claims[0].is_err(), "{answers:?}");
    assert_eq!(
        answers[1].claims[0].as_ref().unwrap(),
        &Claim::Claimed,
        "claimed again under its token"
    );
    assert!(answers[1].rate.unwrap().allowed);
}
