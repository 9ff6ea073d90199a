// k6 load test for txengine: the seed's 200 VUs for 20 s against
// POST /transactions, with unique ids, a check on every answer, thresholds
// on errors and p99, and a JSON summary written under reports/.
//
//   k6 run -e TXENGINE_URL=http://127.0.0.1:8080 -e TXENGINE_ADMIN_TOKEN=... k6/load.js
//
// With -e BATCH=<n> (2 ..= 1000), every iteration posts n transactions in
// one POST /transactions/batch and checks each item's result instead.
//
// With TXENGINE_ADMIN_TOKEN set, setup() funds the accounts and makes an API
// key for every account (its rate limit far above the load, so every request
// pays for the limiter); else it uses TXENGINE_API_KEY (`harness up` prints
// one).
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';

const BASE_URL = __ENV.TXENGINE_URL || 'http://127.0.0.1:8080';
const ADMIN_TOKEN = __ENV.TXENGINE_ADMIN_TOKEN || '';
const API_KEY = __ENV.TXENGINE_API_KEY || '';
/** The largest rate a key may have: far above what 200 VUs send. */
export const KEY_RATE_PER_S = 1000000;
const ACCOUNTS = parseInt(__ENV.ACCOUNTS || '1000', 10);
const START_BALANCE = 1000000;
const RUN_ID = __ENV.RUN_ID || `k6-${Date.now().toString(36)}`;
/** Transactions per request: 1 posts /transactions, more /transactions/batch. */
export const BATCH = parseInt(__ENV.BATCH || '1', 10);

export const options = {
  vus: parseInt(__ENV.VUS || '200', 10),
  duration: __ENV.DURATION || '20s',
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<50'],
    checks: ['rate>0.999'],
  },
};

/** The account name for an index, the same scheme as the goose runner. */
export function accountName(index) {
  return `acct-${index}`;
}

/**
 * The transaction a VU sends on one iteration: a unique id (run, VU,
 * iteration), 60% transfers, 25% debits, 15% credits, amounts 1..1000.
 * `random` is a function returning [0, 1), so tests can fix it.
 */
export function makeTransaction(vu, iteration, accounts, random) {
  const from = Math.floor(random() * accounts);
  const roll = random() * 100;
  const type = roll < 60 ? 'transfer' : roll < 85 ? 'debit' : 'credit';
  const tx = {
    id: `${RUN_ID}-${vu}-${iteration}`,
    type,
    account: accountName(from),
    amount: 1 + Math.floor(random() * 1000),
  };
  if (type === 'transfer') {
    const offset = 1 + Math.floor(random() * Math.max(accounts - 1, 1));
    tx.to = accountName((from + offset) % accounts);
  }
  return tx;
}

/** True when an answer to POST /transactions is what the API promises. */
export function acceptedAnswer(status, body, id) {
  return (status === 202 || status === 200) && body !== null && body.id === id
    && ['pending', 'applied', 'rejected'].includes(body.status);
}

/**
 * True when an answer to POST /transactions/batch accepted every item:
 * 200 with one result per id, in order, each pending, applied or rejected.
 */
export function acceptedBatchAnswer(status, body, ids) {
  return status === 200 && body !== null && Array.isArray(body.results)
    && body.results.length === ids.length
    && body.results.every((result, i) => result.id === ids[i]
      && ['pending', 'applied', 'rejected'].includes(result.status));
}

function parse(body) {
  try {
    return JSON.parse(body);
  } catch (_) {
    return null;
  }
}

/**
 * Funds the accounts and makes the run's API key with the admin token, or
 * takes TXENGINE_API_KEY; returns `{ apiKey }` for the VUs.
 */
export function setup() {
  if (!ADMIN_TOKEN) {
    if (!API_KEY) {
      throw new Error('set TXENGINE_API_KEY (harness up prints one) or TXENGINE_ADMIN_TOKEN');
    }
    return { apiKey: API_KEY };
  }
  const params = {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${ADMIN_TOKEN}` },
  };
  for (let i = 0; i < ACCOUNTS; i++) {
    const res = http.put(`${BASE_URL}/balance/${accountName(i)}`, JSON.stringify({ balance: START_BALANCE }), params);
    check(res, { 'account funded': (r) => r.status === 200 });
  }
  const key = http.post(
    `${BASE_URL}/admin/keys`,
    JSON.stringify({ accounts: ['*'], rate_per_s: KEY_RATE_PER_S, burst: KEY_RATE_PER_S }),
    params,
  );
  const made = key.status === 201 ? parse(key.body) : null;
  if (made === null || typeof made.secret !== 'string') {
    throw new Error(`POST /admin/keys answered ${key.status}: ${key.body}`);
  }
  return { apiKey: made.secret };
}

/**
 * One iteration: one transaction, or `batch` of them in one request (ids
 * `<run>-<vu>-<iteration>-<item>`), and the check of the answer.
 */
export function send(data, batch) {
  const vu = exec.vu.idInTest;
  const iteration = exec.vu.iterationInScenario;
  const params = (name) => ({
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${data.apiKey}` },
    tags: { name },
  });
  if (batch <= 1) {
    const tx = makeTransaction(vu, iteration, ACCOUNTS, Math.random);
    const res = http.post(`${BASE_URL}/transactions`, JSON.stringify(tx), params('POST /transactions'));
    check(res, {
      'accepted (202/200 with the id and a status)': (r) => acceptedAnswer(r.status, parse(r.body), tx.id),
    });
    return;
  }
  const transactions = [];
  for (let item = 0; item < batch; item++) {
    const tx = makeTransaction(vu, iteration, ACCOUNTS, Math.random);
    tx.id = `${tx.id}-${item}`;
    transactions.push(tx);
  }
  const res = http.post(
    `${BASE_URL}/transactions/batch`,
    JSON.stringify({ transactions }),
    params('POST /transactions/batch'),
  );
  const ids = transactions.map((tx) => tx.id);
  check(res, {
    'every item accepted (one result per id, in order)': (r) => acceptedBatchAnswer(r.status, parse(r.body), ids),
  });
}

export default function (data) {
  send(data, BATCH);
}

/** The figures a report needs, picked out of k6's summary data. */
export function summarize(data) {
  const metric = (name) => (data.metrics[name] ? data.metrics[name].values : {});
  const duration = metric('http_req_duration');
  const requests = metric('http_reqs');
  const failed = metric('http_req_failed');
  return {
    generator: 'k6',
    run_id: RUN_ID,
    target: BASE_URL,
    vus: options.vus,
    duration: options.duration,
    batch: BATCH,
    requests: requests.count || 0,
    rps: requests.rate || 0,
    error_rate: failed.rate || 0,
    latency_ms_p50: duration.med || 0,
    latency_ms_p95: duration['p(95)'] || 0,
    latency_ms_p99: duration['p(99)'] || 0,
    latency_ms_max: duration.max || 0,
  };
}

export function handleSummary(data) {
  const summary = summarize(data);
  const line = `k6: ${summary.requests} requests, ${summary.rps.toFixed(0)} req/s, `
    + `p99 ${summary.latency_ms_p99.toFixed(1)} ms, errors ${(summary.error_rate * 100).toFixed(2)}%\n`;
  return {
    [`reports/k6-summary-${RUN_ID}.json`]: JSON.stringify(summary, null, 2),
    stdout: line,
  };
}
