// The console's pure parts, without a browser or an engine: money in an
// asset's units, and reading /metrics. Bundled from the TypeScript sources
// with the pinned esbuild, then imported.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

import { build } from "esbuild";

const src = join(dirname(fileURLToPath(import.meta.url)), "../src");
const out = mkdtempSync(join(tmpdir(), "txengine-console-units-"));
after(() => rmSync(out, { recursive: true, force: true }));

async function load(name) {
  await build({ entryPoints: [join(src, `${name}.ts`)], outfile: join(out, `${name}.mjs`), format: "esm", bundle: true, logLevel: "warning" });
  return import(pathToFileURL(join(out, `${name}.mjs`)).href);
}

const money = await load("money");
const metrics = await load("metrics");

test("amounts are shown in the asset's major units, exactly", () => {
  const cases = [
    [1234, "USD/2", "12.34 USD"],
    [-5, "USD/2", "-0.05 USD"],
    [0, "USD/2", "0.00 USD"],
    [123456789, "USD/2", "1,234,567.89 USD"],
    [1, "BTC/8", "0.00000001 BTC"],
    [1500, "POINTS", "1,500 POINTS"],
    [Number.MAX_SAFE_INTEGER, "EUR/2", "90,071,992,547,409.91 EUR"],
    [-Number.MAX_SAFE_INTEGER, "JPY", "-9,007,199,254,740,991 JPY"],
    // Past 2^53 (a change between the two bounds), still scaled.
    [2 ** 54 - 2, "USD/2", "180,143,985,094,819.82 USD"],
    [-(2 ** 70), "USD/2", "-11,805,916,207,174,113,034.24 USD"],
  ];
  for (const [minor, asset, shown] of cases) assert.equal(money.formatMoney(minor, asset), shown, `${minor} ${asset}`);
});

test("typed amounts become minor units, never rounded", () => {
  const cases = [
    ["12.34", "USD/2", 1234],
    ["12.3", "USD/2", 1230],
    ["12", "USD/2", 1200],
    ["-5.00", "USD/2", -500],
    [" 1,000.25 ", "USD/2", 100025],
    ["0.00000001", "BTC/8", 1],
    ["7", "POINTS", 7],
    ["90071992547409.91", "USD/2", Number.MAX_SAFE_INTEGER],
  ];
  for (const [typed, asset, minor] of cases) assert.equal(money.parseMoney(typed, asset), minor, `${typed} ${asset}`);
  for (const [typed, asset, why] of [
    ["1.234", "USD/2", /2 decimal places/],
    ["1.5", "POINTS", /0 decimal places/],
    ["abc", "USD/2", /not an amount/],
    ["1e3", "USD/2", /not an amount/],
    ["", "USD/2", /not an amount/],
    ["90071992547409.92", "USD/2", /too large/],
  ]) {
    assert.throws(() => money.parseMoney(typed, asset), why, `${typed} ${asset}`);
  }
});

const SCRAPE = `# TYPE txengine_http_requests_total counter
txengine_http_requests_total{route="/transactions",method="POST",status="202"} 7
txengine_http_requests_total{route="/transaction",method="POST",status="202"} 2
txengine_http_requests_total{route="/transactions",method="POST",status="422"} 5
txengine_http_requests_total{route="/transactions/{id}",method="GET",status="200"} 11
txengine_consumer_lag{topic="tx",partition="0"} 3
txengine_consumer_lag{topic="tx",partition="1"} 4
txengine_odd{label="a \\"quoted\\" value"} 1
txengine_http_request_seconds_bucket{route="/transactions",method="POST",le="0.01"} 50
txengine_http_request_seconds_bucket{route="/transactions",method="POST",le="0.1"} 90
txengine_http_request_seconds_bucket{route="/transactions",method="POST",le="1"} 100
txengine_http_request_seconds_bucket{route="/transactions",method="POST",le="+Inf"} 100
txengine_http_request_seconds_bucket{route="/other",method="POST",le="+Inf"} 1000
`;

test("metrics are summed by name and labels", () => {
  const samples = metrics.parseMetrics(SCRAPE);
  const accepted = { route: ["/transactions", "/transaction"], method: "POST", status: "202" };
  assert.equal(metrics.total(samples, "txengine_http_requests_total", accepted), 9);
  assert.equal(metrics.total(samples, "txengine_consumer_lag"), 7);
  assert.equal(metrics.total(samples, "txengine_missing"), 0);
  assert.equal(samples.find((s) => s.name === "txengine_odd").labels.label, 'a "quoted" value');
});

test("p99 is read from the buckets as Prometheus reads it", () => {
  const samples = metrics.parseMetrics(SCRAPE);
  const buckets = metrics.buckets(samples, "txengine_http_request_seconds", { route: "/transactions" });
  // Rank 99 of 100 falls in (0.1, 1], 9 of its 10: 0.1 + 0.9 * 9/10.
  assert.ok(Math.abs(metrics.quantile(0.99, buckets) - 0.91) < 1e-9);
  // Rank 50 is the top of the first bucket.
  assert.ok(Math.abs(metrics.quantile(0.5, buckets) - 0.01) < 1e-9);
  assert.equal(metrics.quantile(0.99, new Map()), undefined);
  // Between two scrapes: only what came in between.
  const before = new Map([[0.01, 50], [0.1, 50], [1, 50], [Infinity, 50]]);
  const recent = metrics.since(buckets, before);
  assert.deepEqual([...recent.values()], [0, 40, 50, 50]);
  assert.ok(Math.abs(metrics.quantile(0.5, recent) - (0.01 + 0.09 * (25 / 40))) < 1e-9);
});

test("a scrape counts what was accepted and applied for the first time", () => {
  const samples = metrics.parseMetrics(`${SCRAPE}
txengine_batch_items_total{status="pending"} 10
txengine_batch_items_total{status="rejected"} 4
txengine_apply_outcomes_total{outcome="applied",duplicate="false"} 20
txengine_apply_outcomes_total{outcome="rejected",duplicate="false"} 3
txengine_apply_outcomes_total{outcome="applied",duplicate="true"} 6
`);
  const scrape = metrics.readScrape(samples, 1000);
  // 7 + 2 single requests answered 202, 10 batch items accepted.
  assert.equal(scrape.accepted, 19);
  // Redelivered records (duplicate="true") were not applied again; the
  // applied count every first outcome, refusals included.
  assert.equal(scrape.applied, 23);
  assert.equal(scrape.rejected, 3);
  assert.equal(scrape.requestSeconds.get(Infinity), 100);
});
