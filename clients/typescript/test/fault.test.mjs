// Kafka stopped (SIGSTOP) while the client submits, one at a time and in a
// batch: resumed within the retry bound, every submission is applied exactly
// once; stalled past it, the error names the id, and a later retry with that
// id applies it once.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import * as tx from "../dist/index.js";
import { engineEnv } from "./engine.mjs";

const env = engineEnv("TXENGINE_URL", "TXENGINE_ADMIN_TOKEN", "TXENGINE_API_KEY", "TXENGINE_KAFKA_PID");

/** Stops the broker now and resumes it after `ms`. */
function stall(pid, ms) {
  process.kill(pid, "SIGSTOP");
  return sleep(ms).then(() => process.kill(pid, "SIGCONT"));
}

test("Kafka stalled within and past the retry bound", { skip: env.skip }, async () => {
  const [url, adminToken, apiKey, pid] = env.values;
  const kafka = Number(pid);
  const admin = new tx.Client(url, { token: adminToken });
  const payer = `ts-stall-${randomUUID().slice(0, 6)}`;
  await admin.putAccount(payer, {});
  await admin.setBalance(payer, 1_000);
  const patient = admin.withToken(apiKey).withRetry({ ...tx.DEFAULT_RETRY, maxElapsedMs: 30_000 });
  const hasty = patient.withRetry({ ...tx.DEFAULT_RETRY, maxElapsedMs: 1_000 });

  const debits = [1, 2, 3, 4, 5].map((amount) => tx.debit(payer, amount));
  const batch = [6, 7, 8].map((amount) => tx.debit(payer, amount));
  const resumed = stall(kafka, 5_000);
  const [answers, results] = await Promise.all([
    Promise.all(debits.map((d) => patient.submit(d))),
    patient.submitBatch(batch),
  ]);
  await resumed;
  assert.deepEqual(
    answers.map((a) => a.id),
    debits.map((d) => d.id),
  );
  assert.deepEqual(
    results.map((r) => [r.id, ["pending", "applied"].includes(r.status)]),
    batch.map((b) => [b.id, true]),
  );
  for (const d of [...debits, ...batch]) assert.equal((await patient.wait(d.id, 30_000)).status, "applied");

  const late = tx.debit(payer, 100);
  const resumedLate = stall(kafka, 3_000);
  const error = await hasty.submit(late).then(
    (answer) => assert.fail(`taken while Kafka was stopped: ${JSON.stringify(answer)}`),
    (e) => e,
  );
  await resumedLate;
  assert.ok(error instanceof tx.RetriesExhausted, String(error));
  assert.equal(error.id, late.id);
  await patient.submit(late);
  assert.equal((await patient.wait(late.id, 30_000)).status, "applied");

  assert.equal((await patient.balance(payer)).balance, 1_000 - 15 - 21 - 100, "each applied once");
  const ids = [];
  for await (const entry of patient.history(payer)) ids.push(entry.id);
  for (const sent of [...debits, ...batch, late]) {
    assert.equal(ids.filter((id) => id === sent.id).length, 1, `${sent.id} in the history once`);
  }
});
