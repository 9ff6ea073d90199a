import { test } from 'node:test';
import assert from 'node:assert/strict';

import { results } from './stubs/k6.mjs';
import { requests, stub } from './stubs/http.mjs';
import exec from './stubs/execution.mjs';
import script, {
  options, makeTransaction, acceptedAnswer, acceptedBatchAnswer, handleSummary, send, setup, BATCH, KEY_RATE_PER_S,
} from '../load.js';

test('options are the seed profile with thresholds', () => {
  assert.equal(options.vus, 200);
  assert.equal(options.duration, '20s');
  assert.deepEqual(Object.keys(options.thresholds).sort(), ['checks', 'http_req_duration', 'http_req_failed']);
  assert.ok(options.summaryTrendStats.includes('p(99)'));
});

test('ids are unique per VU and iteration, and the mix follows its weights', () => {
  const ids = new Set();
  const kinds = { transfer: 0, debit: 0, credit: 0 };
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let vu = 1; vu <= 20; vu++) {
    for (let iteration = 0; iteration < 500; iteration++) {
      const tx = makeTransaction(vu, iteration, 1000, random);
      ids.add(tx.id);
      kinds[tx.type] += 1;
      assert.ok(tx.amount >= 1 && tx.amount <= 1000 && Number.isInteger(tx.amount));
      assert.match(tx.id, /^[A-Za-z0-9_.:-]{1,64}$/);
      if (tx.type === 'transfer') {
        assert.notEqual(tx.to, tx.account);
      } else {
        assert.equal(tx.to, undefined);
      }
    }
  }
  assert.equal(ids.size, 10000);
  assert.ok(Math.abs(kinds.transfer / 10000 - 0.6) < 0.03, JSON.stringify(kinds));
  assert.ok(Math.abs(kinds.debit / 10000 - 0.25) < 0.03, JSON.stringify(kinds));
});

test('a transfer between two accounts never targets its source', () => {
  for (let i = 0; i < 100; i++) {
    const tx = makeTransaction(1, i, 2, Math.random);
    if (tx.type === 'transfer') assert.notEqual(tx.to, tx.account);
  }
});

test('the check accepts 202/200 with the id and refuses everything else', () => {
  assert.ok(acceptedAnswer(202, { id: 'a', status: 'pending' }, 'a'));
  assert.ok(acceptedAnswer(200, { id: 'a', status: 'applied' }, 'a'));
  assert.ok(!acceptedAnswer(202, { id: 'b', status: 'pending' }, 'a'));
  assert.ok(!acceptedAnswer(503, { status: 503 }, 'a'));
  assert.ok(!acceptedAnswer(202, null, 'a'));
});

test('an iteration posts JSON to /transactions and checks the answer', () => {
  results.length = 0;
  requests.length = 0;
  exec.vu.iterationInScenario = 7;
  script({ apiKey: 'txk_key' });
  assert.equal(requests.length, 1);
  assert.equal(requests[0].method, 'POST');
  assert.match(requests[0].url, /\/transactions$/);
  assert.equal(requests[0].params.headers['Content-Type'], 'application/json');
  assert.equal(requests[0].params.headers.Authorization, 'Bearer txk_key');
  assert.equal(JSON.parse(requests[0].body).id, 'test-run-1-7');
  assert.deepEqual(results.map((r) => r.ok), [true]);

  stub.respond = () => ({ status: 503, body: '{"status":503}' });
  script({ apiKey: 'txk_key' });
  assert.deepEqual(results.map((r) => r.ok), [true, false]);
});

test('a batch iteration posts its items to /transactions/batch and checks each result', () => {
  const original = stub.respond;
  results.length = 0;
  requests.length = 0;
  assert.equal(BATCH, 1, 'single requests unless BATCH is set');
  exec.vu.iterationInScenario = 3;
  stub.respond = (method, url, body) => ({
    status: 200,
    body: JSON.stringify({ results: JSON.parse(body).transactions.map((tx) => ({ id: tx.id, status: 'pending' })) }),
  });
  send({ apiKey: 'txk_key' }, 4);
  assert.equal(requests.length, 1);
  assert.match(requests[0].url, /\/transactions\/batch$/);
  const ids = JSON.parse(requests[0].body).transactions.map((tx) => tx.id);
  assert.deepEqual(ids, ['test-run-1-3-0', 'test-run-1-3-1', 'test-run-1-3-2', 'test-run-1-3-3']);
  assert.deepEqual(results.map((r) => r.ok), [true]);

  // One item refused, or the results out of order: the check fails.
  stub.respond = (method, url, body) => ({
    status: 200,
    body: JSON.stringify({
      results: JSON.parse(body).transactions.map((tx, i) => ({ id: tx.id, status: i === 2 ? 'rate_limited' : 'pending' })),
    }),
  });
  send({ apiKey: 'txk_key' }, 4);
  assert.deepEqual(results.map((r) => r.ok), [true, false]);
  assert.ok(!acceptedBatchAnswer(200, { results: [{ id: 'b', status: 'pending' }, { id: 'a', status: 'pending' }] }, ['a', 'b']));
  assert.ok(!acceptedBatchAnswer(503, { status: 503 }, ['a']));
  assert.ok(acceptedBatchAnswer(200, { results: [{ id: 'a', status: 'applied' }] }, ['a']));
  stub.respond = original;
});

test('setup funds the accounts and makes a key for every account with the admin token', () => {
  const original = stub.respond;
  requests.length = 0;
  stub.respond = (method, url) => (url.endsWith('/admin/keys')
    ? { status: 201, body: JSON.stringify({ id: 'k', secret: 'txk_made' }) }
    : { status: 200, body: '{}' });
  assert.deepEqual(setup(), { apiKey: 'txk_made' });
  assert.equal(requests.filter((r) => r.method === 'PUT').length, 3);
  const key = requests.find((r) => r.url.endsWith('/admin/keys'));
  assert.equal(key.method, 'POST');
  assert.equal(key.params.headers.Authorization, 'Bearer admin-token');
  assert.deepEqual(JSON.parse(key.body), { accounts: ['*'], rate_per_s: KEY_RATE_PER_S, burst: KEY_RATE_PER_S });
  stub.respond = () => ({ status: 403, body: '{"status":403}' });
  assert.throws(() => setup(), /admin\/keys answered 403/);
  stub.respond = original;
});

test('handleSummary writes the JSON summary under reports/', () => {
  const out = handleSummary({
    metrics: {
      http_reqs: { values: { count: 1000, rate: 50 } },
      http_req_failed: { values: { rate: 0 } },
      http_req_duration: { values: { med: 1.5, 'p(95)': 3, 'p(99)': 4, max: 9 } },
    },
  });
  const summary = JSON.parse(out['reports/k6-summary-test-run.json']);
  assert.equal(summary.requests, 1000);
  assert.equal(summary.latency_ms_p99, 4);
  assert.match(out.stdout, /1000 requests/);
});
