// The shared cases (clients/cases.json) with the TypeScript client.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import * as tx from "../dist/index.js";
import { CASES, engineEnv } from "./engine.mjs";

test("the retry rules are the shared ones", () => {
  for (const rule of CASES.retry_rules) {
    assert.equal(tx.isRetriedStatus(rule.status), rule.retried, JSON.stringify(rule));
  }
  assert.deepEqual([...tx.RETRIED_ITEM_STATUSES].sort(), [...CASES.batch_retried_statuses].sort());
});

test("backoff doubles under its cap, with jitter, and honours Retry-After", () => {
  const policy = { maxElapsedMs: 10_000, initialBackoffMs: 100, maxBackoffMs: 400 };
  for (let i = 0; i < 200; i++) {
    assert.ok(tx.backoff(policy, 1, 0) <= 100);
    assert.ok(tx.backoff(policy, 3, 0) <= 400);
    assert.ok(tx.backoff(policy, 9, 0) <= 400);
    assert.ok(tx.backoff(policy, 1, 2_000) >= 2_000);
  }
  assert.ok(new Set(Array.from({ length: 20 }, () => tx.backoff(policy, 3, 0))).size > 1);
});

test("connection errors are retried, but making a key never is", async () => {
  // Nothing listens on port 1 of loopback: every try is refused at once.
  const client = new tx.Client("http://127.0.0.1:1", { token: "t", retry: { ...tx.DEFAULT_RETRY, maxElapsedMs: 300 } });
  const retried = await client.balance("a").catch((e) => e);
  assert.ok(retried instanceof tx.RetriesExhausted, String(retried));
  assert.ok(retried.attempts > 1);
  assert.ok(retried.last instanceof tx.TransportError);
  const once = await client.createKey({ accounts: ["*"] }).catch((e) => e);
  assert.ok(once instanceof tx.TransportError, String(once));
});

test("ids are UUIDv7, made before the first try", () => {
  const [first, second] = [tx.debit("a", 1), tx.debit("a", 1)];
  assert.match(first.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(first.id, second.id);
  assert.ok(first.id.slice(0, 13) <= second.id.slice(0, 13));
});

const env = engineEnv("TXENGINE_URL", "TXENGINE_ADMIN_TOKEN", "TXENGINE_API_KEY");

test("an id goes into its path as one segment, whatever it holds", { skip: env.skip }, async () => {
  const [url, , apiKey] = env.values;
  const client = new tx.Client(url, { token: apiKey, retry: tx.NEVER });
  // Encoded, "no/such" reaches the account route and is refused as an id
  // (422); sent raw it would be another path, which no route matches (404).
  const refused = await client.account("no/such").catch((e) => e);
  assert.ok(refused instanceof tx.Problem, String(refused));
  assert.equal(refused.status, 422, String(refused));
});

for (const [index, kase] of CASES.cases.entries()) {
  test(kase.name, { skip: env.skip }, async () => {
    const [url, adminToken, apiKey] = env.values;
    const admin = new tx.Client(url, { token: adminToken });
    await new Runner(admin, admin.withToken(apiKey), `ts-${randomUUID().slice(0, 6)}-${index}`).run(kase);
  });
}

function fieldsMatch(expected, actual) {
  for (const [field, want] of Object.entries(expected ?? {})) {
    assert.deepEqual(actual[field] ?? null, want, `${field} in ${JSON.stringify(actual)}`);
  }
}

class Runner {
  constructor(admin, key, prefix) {
    Object.assign(this, { admin, key, prefix, transactions: {}, keys: {}, times: {} });
  }

  account(name) {
    return `${this.prefix}-${name}`;
  }

  async run(kase) {
    for (const [name, spec] of Object.entries(kase.accounts)) {
      const { balance = 0, ...bounds } = spec;
      await this.admin.putAccount(this.account(name), bounds);
      await this.admin.setBalance(this.account(name), balance);
    }
    for (const step of kase.steps) {
      try {
        await this.step(step);
      } catch (e) {
        e.message = `step ${JSON.stringify(step)}: ${e.message}`;
        throw e;
      }
    }
  }

  transactionOf(body, id) {
    const options = { id, asset: body.asset, metadata: body.metadata };
    const name = (field) => this.account(body[field]);
    switch (body.type) {
      case "debit":
        return tx.debit(name("account"), body.amount, options);
      case "credit":
        return tx.credit(name("account"), body.amount, options);
      case "transfer":
        return tx.transfer(name("account"), name("to"), body.amount, options);
      case "hold":
        return tx.hold(name("account"), body.amount, {
          ...options,
          to: body.to && this.account(body.to),
          timeout_s: body.timeout_s,
        });
      case "capture":
        return tx.capture(this.transactions[body.hold].id, body.amount, options);
      case "void":
        return tx.voidHold(this.transactions[body.hold].id, options);
      case "postings":
        return tx.postings(
          body.postings.map((p) => ({ from: this.account(p.from), to: this.account(p.to), amount: p.amount })),
          options,
        );
      default:
        throw new Error(`a type the cases do not have: ${body.type}`);
    }
  }

  /** The call's answer, or undefined when the step expects a refusal and it came. */
  async refusedOr(step, call) {
    if (!step.refused) return call();
    const error = await call().then(
      (answer) => assert.fail(`expected ${JSON.stringify(step.refused)}, got ${JSON.stringify(answer)}`),
      (e) => e,
    );
    // A refusal that is not retried comes as it is, never wrapped.
    assert.ok(error instanceof tx.Problem, `expected ${JSON.stringify(step.refused)}, got ${error}`);
    assert.deepEqual({ status: error.status, slug: error.slug }, step.refused);
    return undefined;
  }

  async step(step) {
    let client = step.key ? this.key.withToken(this.keys[step.key].secret) : this.key;
    if (step.retry === "never") client = client.withRetry(tx.NEVER);
    if (step.submit) {
      const sent = this.transactionOf(step.submit, step.same_id_as && this.transactions[step.same_id_as].id);
      if (step.as) this.transactions[step.as] = sent;
      const answer = await this.refusedOr(step, () => client.submit(sent));
      if (answer === undefined) return;
      assert.equal(answer.id, sent.id);
      fieldsMatch(step.answers, answer);
      if (step.settles) fieldsMatch(step.settles, await this.key.wait(sent.id, 20_000));
    } else if (step.batch) {
      const items = step.batch.map((body) => this.transactionOf(body));
      const results = await client.submitBatch(items);
      assert.deepEqual(
        results.map((r) => r.id),
        items.map((i) => i.id),
      );
      step.results.forEach((expected, i) => fieldsMatch(expected, results[i]));
      for (const [i, expected] of step.settles.entries()) {
        if (expected) fieldsMatch(expected, await this.key.wait(items[i].id, 20_000));
      }
    } else if (step.balance) {
      fieldsMatch(step.is, await client.balance(this.account(step.balance)));
    } else if (step.mark) {
      const newest = await client.history(this.account(step.account), { limit: 1 }).next();
      this.times[step.mark] = newest.value.at;
    } else if (step.account) {
      fieldsMatch(step.is, await client.account(this.account(step.account)));
    } else if (step.transaction) {
      const id = this.transactions[step.transaction]?.id ?? tx.newId();
      const found = await this.refusedOr(step, () => client.transaction(id));
      if (found) fieldsMatch(step.is, found);
    } else if (step.history) {
      const entries = [];
      for await (const entry of client.history(this.account(step.history), { limit: step.limit })) entries.push(entry);
      assert.equal(entries.length, step.entries.length, JSON.stringify(entries));
      step.entries.forEach((expected, i) => fieldsMatch(expected, entries[i]));
    } else if (step.balance_at) {
      fieldsMatch(step.is, await client.balanceAt(this.account(step.balance_at), this.times[step.at]));
    } else if (step.put_account) {
      const found = await this.refusedOr(step, () => this.admin.putAccount(this.account(step.put_account), step.spec));
      if (found) fieldsMatch(step.is, found);
    } else if (step.create_key) {
      const { accounts, rate_per_s, burst } = step.create_key;
      this.keys[step.as] = await this.admin.createKey({ accounts: accounts.map((a) => this.account(a)), rate_per_s, burst });
    } else if (step.keys_include) {
      const listed = (await this.admin.keys()).map((k) => k.id);
      assert.ok(listed.includes(this.keys[step.keys_include].id));
    } else if (step.revoke) {
      await this.admin.revokeKey(this.keys[step.revoke].id);
    } else {
      throw new Error(`a step this runner does not know: ${JSON.stringify(step)}`);
    }
  }
}
