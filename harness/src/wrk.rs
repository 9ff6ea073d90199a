//! The lean generator for peak capacity: Debian's `wrk` with
//! `harness/wrk/post.lua`, its output read into the same report as goose's.
//! wrk keeps no ledger, so the run's transactions are rebuilt from the ids
//! found in Redis: the script's movement is a pure function of its id.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use anyhow::{bail, Context};

use crate::load::LoadProfile;
use crate::measure::HttpResult;
use crate::workload::{account_name, Kind, Ledger, Mix, SentTx};

/// The wrk script, relative to the harness crate.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/wrk/post.lua");

/// The movement the wrk script sends as request `n` of thread `thread_id`:
/// `(kind, from, to, amount)`. Mirrors `movement()` in `wrk/post.lua`.
pub fn movement_for(thread_id: u64, n: u64, accounts: u64) -> (Kind, u64, Option<u64>, u64) {
    let x = (n * 2_654_435_761 + thread_id * 40_503) % 4_294_967_296;
    let from = x % accounts;
    let roll = (x / accounts) % 100;
    let amount = 1 + (x / 13) % 1000;
    match Mix::LOAD.kind(roll as u32) {
        Kind::Transfer => {
            let to = (from + 1 + (x / 7) % (accounts - 1)) % accounts;
            (Kind::Transfer, from, Some(to), amount)
        }
        kind => (kind, from, None, amount),
    }
}

/// Rebuilds the transaction behind an id `<run>-<thread>-<n>`.
pub fn sent_tx(id: &str, run: &str, accounts: u64) -> Option<SentTx> {
    let rest = id.strip_prefix(run)?.strip_prefix('-')?;
    let (thread, n) = rest.split_once('-')?;
    let (kind, from, to, amount) = movement_for(thread.parse().ok()?, n.parse().ok()?, accounts);
    Some(SentTx {
        id: id.to_owned(),
        kind,
        account: account_name(from as usize),
        to: to.map(|t| account_name(t as usize)),
        amount,
        accepted_at_ms: 0,
        hold: None,
        legs: Vec::new(),
    })
}

/// Runs wrk against `base_url` as `profile` says (its users are wrk's
/// connections) and reads its summary.
pub fn drive(
    base_url: &str,
    api_key: &str,
    name: &str,
    run: &str,
    profile: &LoadProfile,
) -> anyhow::Result<HttpResult> {
    let (connections, seconds) = (profile.users, profile.seconds);
    let (accounts, batch) = (profile.accounts, profile.batch);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(connections);
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        // In the environment, where `ps` does not show it.
        .env("TXENGINE_API_KEY", api_key)
        .args([
            "--latency",
            "--timeout",
            "10s",
            "-s",
            SCRIPT,
            base_url,
            "--",
            run,
        ])
        .arg(accounts.to_string())
        .arg(batch.to_string())
        .output()
        .context("running wrk (install it: scripts/install-deps)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text, name, connections, seconds, batch)
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`) in milliseconds.
fn millis(raw: &str) -> Option<f64> {
    let (number, scale) = if let Some(v) = raw.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = raw.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = raw.strip_suffix('m') {
        (v, 60_000.0)
    } else if let Some(v) = raw.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Reads wrk's `--latency` summary.
pub fn parse(
    text: &str,
    name: &str,
    connections: usize,
    seconds: usize,
    batch: usize,
) -> anyhow::Result<HttpResult> {
    let mut percentiles: HashMap<&str, f64> = HashMap::new();
    let mut requests = None;
    let mut max_ms = 0.0;
    let mut errors_by_kind = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => max_ms = millis(max).unwrap_or(0.0),
            [p @ ("50%" | "75%" | "90%" | "99%"), value] => {
                percentiles.insert(p, millis(value).context("latency percentile")?);
            }
            [count, "requests", "in", ..] => requests = count.parse::<usize>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                errors_by_kind.insert("http non-2xx".to_owned(), count.parse()?);
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                for pair in rest.join(" ").split(',') {
                    if let Some((kind, count)) = pair.trim().split_once(' ') {
                        let count: usize = count.trim().parse().unwrap_or(0);
                        if count > 0 {
                            errors_by_kind.insert(format!("socket {kind}"), count);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let requests = requests.context("wrk printed no request count")?;
    let errors: usize = errors_by_kind.values().sum();
    let ok = requests.saturating_sub(errors);
    Ok(HttpResult {
        target: name.to_owned(),
        users: connections,
        seconds,
        requests,
        ok,
        errors_by_kind,
        rps: ok as f64 / seconds.max(1) as f64,
        // Every item of a 2xx batch counts here; the harness checks
        // against Redis that each was accepted (`bench::run_load`).
        batch,
        transactions_per_s: (ok * batch) as f64 / seconds.max(1) as f64,
        latency_ms_p50: percentiles.get("50%").copied().unwrap_or(0.0),
        // wrk prints 50/75/90/99: no 95th.
        latency_ms_p90: percentiles.get("90%").copied(),
        latency_ms_p95: None,
        latency_ms_p99: percentiles.get("99%").copied().unwrap_or(0.0),
        latency_ms_max: max_ms,
    })
}

/// Rebuilds a wrk run's ledger from Redis: every id of the run that has a
/// record there was accepted (202) by the engine. `redis_urls` are every
/// master that holds keys (one Redis, or each master of a cluster).
pub async fn ledger_from_redis(
    redis_urls: &[String],
    layout: &txengine::store::Layout,
    run: &str,
    accounts: usize,
) -> anyhow::Result<Ledger> {
    let mut ledger = Ledger::default();
    for url in redis_urls {
        scan_accepted(url, layout, run, accounts, &mut ledger).await?;
    }
    Ok(ledger)
}

async fn scan_accepted(
    redis_url: &str,
    layout: &txengine::store::Layout,
    run: &str,
    accounts: usize,
    ledger: &mut Ledger,
) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = layout.tx_pattern(&format!("{run}-*"));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        // Only records Kafka acknowledged count: a claim whose request was
        // cut off when wrk stopped was never accepted.
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HMGET").arg(key).arg("state").arg("accepted");
        }
        let states: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await?;
        for (key, (state, accepted)) in keys.iter().zip(states) {
            let settled = matches!(state.as_deref(), Some("applied" | "rejected"));
            if !settled && accepted.is_none() {
                continue;
            }
            let id = key.split_once(":tx:").map_or("", |(_, id)| id);
            let tx =
                sent_tx(id, run, accounts as u64).with_context(|| format!("unexpected id {id}"))?;
            ledger.accepted.push(tx);
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 20s test @ http://127.0.0.1:8080
  2 threads and 200 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.12ms    2.01ms  48.30ms   80.00%
    Req/Sec    16.41k     1.02k   18.90k    70.00%
  Latency Distribution
     50%    5.90ms
     75%    7.10ms
     90%    8.20ms
     99%   12.50ms
  653210 requests in 20.00s, 81.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  32660.50
Transfer/sec:      4.05MB
";

    #[test]
    fn reads_the_latency_summary() {
        let result = parse(SAMPLE, "engine", 200, 20, 1).unwrap();
        assert_eq!(result.requests, 653_210);
        assert_eq!(result.ok, 653_210 - 12);
        assert_eq!(result.latency_ms_p50, 5.9);
        assert_eq!(result.latency_ms_p99, 12.5);
        assert_eq!(result.latency_ms_max, 48.3);
        assert_eq!(result.errors_by_kind["http non-2xx"], 7);
        assert_eq!(result.errors_by_kind["socket read"], 3);
        assert_eq!(result.errors_by_kind["socket timeout"], 2);
        assert_eq!(millis("812.00us"), Some(0.812));
        assert_eq!(millis("2.00s"), Some(2000.0));
    }

    #[test]
    fn ids_rebuild_the_movement_and_follow_the_mix() {
        let mut kinds = HashMap::new();
        for n in 0..10_000 {
            let tx = sent_tx(&format!("run-1-{n}"), "run", 1000).unwrap();
            assert_ne!(Some(&tx.account), tx.to.as_ref());
            assert!((1..=1000).contains(&tx.amount));
            *kinds.entry(tx.kind).or_insert(0) += 1;
        }
        let share = |k: Kind| kinds[&k] as f64 / 10_000.0;
        assert!((share(Kind::Transfer) - 0.60).abs() < 0.03, "{kinds:?}");
        assert!((share(Kind::Debit) - 0.25).abs() < 0.03, "{kinds:?}");
        assert!(sent_tx("other-1-2", "run", 1000).is_none());
    }
}

#[cfg(test)]
mod script_tests {
    use super::*;

    /// The Lua script and `movement_for` must pick the same movement for
    /// every id, or the ledger rebuilt after a wrk run would be wrong. wrk
    /// embeds LuaJIT; Debian's `luajit` runs the script's function here.
    #[test]
    fn the_wrk_script_and_movement_for_agree() {
        let driver = format!(
            "wrk = {{ headers = {{}} }}\ndofile('{SCRIPT}')\ninit({{'run', '997'}})\n\
             for t = 0, 3 do for n = 0, 2000 do\n\
               local kind, from, to, amount = movement(t, n)\n\
               print(kind, from, to or -1, amount)\n\
             end end\n"
        );
        let output = Command::new("luajit")
            .arg("-e")
            .arg(driver)
            .output()
            .expect("luajit (scripts/install-deps)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        for t in 0..=3u64 {
            for n in 0..=2000u64 {
                let (kind, from, to, amount) = movement_for(t, n, 997);
                let expected = format!(
                    "{}\t{from}\t{}\t{amount}",
                    kind.as_str(),
                    to.map(|v| v as i64).unwrap_or(-1)
                );
                assert_eq!(
                    lines.next(),
                    Some(expected.as_str()),
                    "thread {t} request {n}"
                );
            }
        }
    }
}
