// The console in a real browser (Debian's Chromium, driven by playwright-core)
// against a live engine: TXENGINE_URL, TXENGINE_API_KEY (every account) and
// TXENGINE_ADMIN_TOKEN, as `harness up` prints them and the engine test
// `console::the_console_in_a_real_browser` sets them. Screenshots of each
// page, at a desktop's and a phone's width, go to reports/console/.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, afterEach, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const consoleDir = join(here, "..");
const screenshots = process.env.TXENGINE_SCREENSHOTS ?? join(consoleDir, "../reports/console");
const { TXENGINE_URL: url, TXENGINE_API_KEY: apiKey, TXENGINE_ADMIN_TOKEN: adminToken } = process.env;
if (!url || !apiKey || !adminToken) {
  throw new Error("set TXENGINE_URL, TXENGINE_API_KEY and TXENGINE_ADMIN_TOKEN (cargo run -p harness -- up prints them)");
}
const run = Math.random().toString(36).slice(2, 8);
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

/** One call to the API from outside the browser, to check what the console did. */
async function apiCall(method, path, { token = apiKey, body } = {}) {
  const response = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}

async function settled(id) {
  for (let i = 0; i < 100; i++) {
    const { body } = await apiCall("GET", `/transactions/${id}`);
    if (body && !["pending", "capturing"].includes(body.status)) return body;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${id} did not settle`);
}

let browser;
let page;
const errors = [];
/** The page's requests still waiting for an answer, and since when. */
const unanswered = new Map();

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await (await browser.newContext({ viewport: DESKTOP })).newPage();
  // A script error or a refused load (the content security policy) fails the run.
  page.on("pageerror", (error) => errors.push(String(error)));
  // A refusal of the API is logged by the browser too: that is the API's
  // answer, which the tests check; any other error is not.
  page.on("console", (message) => {
    const refusal = message.text().startsWith("Failed to load resource: the server responded");
    if (message.type() === "error" && !refusal) errors.push(message.text());
  });
  page.on("response", (response) => {
    const own = new URL(response.url()).pathname.startsWith("/console");
    if (own && response.status() !== 200) errors.push(`${response.url()}: ${response.status()}`);
  });
  page.on("requestfailed", (request) => errors.push(`${request.url()}: ${request.failure()?.errorText}`));
  page.on("request", (request) => unanswered.set(request, Date.now()));
  page.on("requestfinished", (request) => unanswered.delete(request));
  page.on("requestfailed", (request) => unanswered.delete(request));
  mkdirSync(screenshots, { recursive: true });
});

// A failed test leaves a picture of the page and its text for the reader.
afterEach(async (t) => {
  if (!t.passed && page) {
    const base = join(tmpdir(), `txengine-console-failed-${run}-${t.name.replace(/\W+/g, "-").slice(0, 40)}`);
    await page.screenshot({ path: `${base}.png`, fullPage: true }).catch(() => {});
    const waiting = [...unanswered].map(([request, since]) => `${request.method()} ${request.url()} for ${Date.now() - since} ms`);
    console.error(`failed at ${page.url()}; its page: ${base}.png; unanswered: ${waiting.join(", ") || "none"}\n${await page.innerText("body").catch(() => "")}`);
  }
});

after(async () => {
  await browser?.close();
});

/** Screenshots of the page as it is, at a desktop's and at a phone's width;
 * at each, nothing may be wider than the window. */
async function shoot(name) {
  for (const [size, viewport] of [["1280", DESKTOP], ["phone", PHONE]]) {
    await page.setViewportSize(viewport);
    // Charts follow the window a frame or two later: wait for the layout to fit.
    const fits = await page
      .waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth, undefined, { timeout: 5_000 })
      .then(() => true, () => false);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(fits, `${name} at ${viewport.width} px is ${overflow} px wider than the window`);
    // A key's secret, shown once, stays out of the pictures.
    const mask = [page.locator('[data-field="secret"]')];
    await page.screenshot({ path: join(screenshots, `${name}-${size}.png`), fullPage: true, mask });
  }
  await page.setViewportSize(DESKTOP);
}

/** Every control of the page has a name a screen reader says (a label,
 * aria-label, or a button's text). */
async function everyControlIsLabelled(pageName) {
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea, button, a[href]")]
      .filter((el) => {
        const labelled = (el.labels?.length ?? 0) > 0 || el.getAttribute("aria-label");
        // A button or link is named by its text; a field only by a label.
        const named = ["BUTTON", "A"].includes(el.tagName) && el.textContent.trim();
        return !labelled && !named;
      })
      .map((el) => el.outerHTML),
  );
  assert.deepEqual(unnamed, [], `controls without a name on ${pageName}`);
}

const text = (locator) => locator.innerText();

test("the served files are what the sources build", async () => {
  const out = mkdtempSync(join(tmpdir(), "txengine-console-"));
  try {
    execFileSync(process.execPath, ["build.mjs", out], { cwd: consoleDir });
    for (const [path, file] of [
      ["/console", "index.html"],
      ["/console/console.js", "console.js"],
      ["/console/console.css", "console.css"],
    ]) {
      const served = await (await fetch(url + path)).text();
      const built = readFileSync(join(out, file), "utf8");
      assert.ok(served === built, `${path} differs from a fresh build's ${file}: run npm run build in console/, then rebuild the engine`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("the engine serves the console under a policy of its own origin only, and the browser holds to it", async () => {
  const response = await fetch(`${url}/console`);
  assert.equal(response.headers.get("content-type"), "text/html; charset=utf-8");
  assert.equal(response.headers.get("x-content-type-options"), "nosniff");
  const policy = response.headers.get("content-security-policy") ?? "";
  for (const directive of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
    assert.ok(policy.includes(directive), `${directive} in ${policy}`);
  }
  // A page of its own, so these refusals are not counted as the console's errors.
  const probe = await (await browser.newContext()).newPage();
  try {
    await probe.goto(`${url}/console#/sign-in`);
    const refused = await probe.evaluate(async () => {
      const directives = [];
      document.addEventListener("securitypolicyviolation", (e) => directives.push(e.effectiveDirective));
      const image = document.createElement("img");
      image.src = "http://127.0.0.2:9/elsewhere.png";
      document.body.append(image);
      await fetch("http://127.0.0.2:9/elsewhere").catch(() => {});
      const script = document.createElement("script");
      script.textContent = "window.injected = true";
      document.body.append(script);
      await new Promise((resolve) => setTimeout(resolve, 200));
      return { directives: directives.sort(), injected: "injected" in window };
    });
    assert.deepEqual(refused, { directives: ["connect-src", "img-src", "script-src-elem"], injected: false });
  } finally {
    await probe.close();
  }
});

test("signing in by keyboard; the token stays in this tab only", async () => {
  await page.goto(`${url}/console`);
  await page.waitForURL(/#\/sign-in$/);
  // The API key's field has the focus: type, Tab to the admin token, Enter.
  await page.waitForFunction(() => document.activeElement?.getAttribute("name") === "api_key");
  await everyControlIsLabelled("sign-in");
  // A key the API refuses is said so, with its detail, and not kept.
  const wrong = `${apiKey.slice(0, -4)}0000`;
  await page.keyboard.type(wrong);
  await page.keyboard.press("Enter");
  const { body: refusal } = await apiCall("GET", "/transactions/x", { token: wrong });
  await page.getByRole("alert").getByText(`The API key was refused: ${refusal.title}: ${refusal.detail}`).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await page.getByLabel("API key").fill("");
  await page.getByLabel("API key").focus();
  await page.keyboard.type(apiKey);
  await page.keyboard.press("Tab");
  await page.keyboard.type(adminToken);
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/overview$/);
  const stored = await page.evaluate(() => ({
    session: Object.values(sessionStorage).map((value) => JSON.parse(value)),
    local: localStorage.length,
  }));
  assert.deepEqual(stored, { session: [{ apiKey, adminToken }], local: 0 });
  // Another tab of the same browser starts signed out.
  const other = await page.context().newPage();
  await other.goto(`${url}/console`);
  await other.waitForURL(/#\/sign-in$/);
  await other.close();
});

test("an address naming no valid id is refused before any call", async () => {
  const called = [];
  const record = (request) => new URL(request.url()).pathname.startsWith("/accounts") && called.push(request.url());
  page.on("request", record);
  // A crafted link: the admin token must not reach /balance/victim through it.
  for (const hash of ["#/accounts/..%2Fbalance%2Fvictim", "#/accounts/..", "#/accounts/%E0%A4%A"]) {
    await page.goto(`${url}/console${hash}`);
    await page.getByRole("heading", { name: "Not an id" }).waitFor();
  }
  page.off("request", record);
  assert.deepEqual(called, []);
});

test("the overview shows readiness and counts what is accepted and applied", async () => {
  // By keyboard from the navigation: the new page has the focus.
  await page.getByRole("link", { name: "Overview" }).focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/overview$/);
  await page.waitForFunction(() => document.activeElement?.id === "view");
  await page.goto(`${url}/console#/overview`);
  const card = (name) => page.locator(`[data-card="${name}"]`);
  await assert.doesNotReject(card("readiness").getByText("ready", { exact: true }).waitFor());
  const count = async (name) => Number((await text(card(name).locator(".note"))).split(" ")[0]);
  const [acceptedBefore, appliedBefore] = [await count("accepted"), await count("applied")];
  const account = `console-${run}-overview`;
  await apiCall("PUT", `/accounts/${account}`, { token: adminToken, body: { asset: "EUR/2" } });
  for (let i = 0; i < 3; i++) {
    const { status } = await apiCall("POST", "/transactions", { body: { id: `${account}-${i}`, type: "credit", account, amount: 100 } });
    assert.equal(status, 202);
  }
  // Counted as accepted, then as applied, as the Overview reads /metrics again.
  for (const [name, before] of [["accepted", acceptedBefore], ["applied", appliedBefore]]) {
    await page.waitForFunction(
      ([name, before]) => Number(document.querySelector(`[data-card="${name}"] .note`)?.textContent?.split(" ")[0]) >= before + 3,
      [name, before],
    );
  }
  assert.equal(await text(card("stalled").locator(".value")), "0");
  // Lag is librdkafka's figure of every 5 s: a count, not always 0 yet.
  assert.match(await text(card("lag").locator(".value")), /^\d+ records$/);
  for (const name of ["p99-accept", "p99-apply"]) {
    assert.match(await text(card(name).locator(".value")), /^\d+\.\d ms$/, name);
  }
  // The rates need two scrapes; the chart draws from the second.
  await page.waitForFunction(() => document.querySelector('[data-card="applied"] .value')?.textContent !== "—");
  await everyControlIsLabelled("overview");
  await shoot("overview");
});

test("an account made and changed in the console is what the API answers", async () => {
  const id = `console-${run}-alice`;
  await page.goto(`${url}/console#/accounts`);
  const form = page.getByRole("form", { name: "New account" });
  await form.getByLabel("Account id").fill(id);
  await form.getByLabel("Asset").fill("USD/2");
  await form.getByLabel("Lowest balance").fill("-5.00");
  await form.getByRole("button", { name: "Create account" }).click();
  await page.waitForURL(new RegExp(`#/accounts/${id}$`));
  await page.locator('[data-field="available"]').getByText("5.00 USD").waitFor();
  let { body } = await apiCall("GET", `/accounts/${id}`);
  assert.equal(body.asset, "USD/2");
  assert.equal(body.min_balance, -500);

  await page.getByText("Change bounds (admin token)").click();
  const change = page.getByRole("form", { name: "Change bounds" });
  await change.getByLabel("Highest balance").fill("1000");
  await change.getByRole("button", { name: "Save bounds" }).click();
  await page.getByText("1,000.00 USD").waitFor();
  ({ body } = await apiCall("GET", `/accounts/${id}`));
  assert.equal(body.max_balance, 100_000);
  await everyControlIsLabelled("accounts");
});

test("money moved in the console shows in its pages and through the API", async () => {
  const id = `console-${run}-bob`;
  const payee = `console-${run}-carol`;
  for (const account of [id, payee]) {
    await apiCall("PUT", `/accounts/${account}`, { token: adminToken, body: { asset: "USD/2" } });
  }
  const move = async (kind, amount, to) => {
    await page.goto(`${url}/console#/accounts/${id}`);
    const form = page.getByRole("form", { name: "Move money" });
    await form.getByLabel("Kind").selectOption(kind);
    if (to) await form.getByLabel("To account").fill(to);
    await form.getByLabel("Amount (USD/2)").fill(amount);
    await form.getByRole("button", { name: "Submit" }).click();
    await page.waitForURL(/#\/transactions\/[0-9a-f-]{36}$/);
    const txId = decodeURIComponent(page.url().split("/").at(-1));
    await page.locator('[data-field="status"]').filter({ hasNotText: "pending" }).waitFor();
    return txId;
  };

  const credit = await move("credit", "12.34");
  assert.equal(await text(page.locator('[data-field="status"]')), "applied");
  await page.getByText("12.34 USD").first().waitFor();
  const seen = await settled(credit);
  assert.deepEqual([seen.status, seen.type, seen.account, seen.amount], ["applied", "credit", id, 1234]);

  const transfer = await move("transfer", "2.50", payee);
  assert.equal((await settled(transfer)).status, "applied");
  assert.equal((await apiCall("GET", `/accounts/${payee}`)).body.balance, 250);
  // The payee is a link to its account's page.
  await page.getByRole("link", { name: payee }).click();
  await page.waitForURL(new RegExp(`#/accounts/${payee}$`));
  await page.locator('[data-field="balance"]').getByText("2.50 USD").waitFor();

  const refused = await move("debit", "100.00");
  await page.getByText("insufficient_funds").waitFor();
  assert.equal((await settled(refused)).reason, "insufficient_funds");

  const hold = await move("hold", "1.00");
  await page.getByText("nothing yet: it still holds the money").waitFor();
  await shoot("transaction-hold");
  const voided = await apiCall("POST", "/transactions", { body: { id: `${hold}-void`, type: "void", hold } });
  assert.equal(voided.status, 202);
  await settled(`${hold}-void`);
  await page.reload();
  // What ended it, with a link to the void.
  await page.locator('[data-field="ended-by"]').getByRole("link", { name: `${hold}-void` }).waitFor();

  const postings = `console-${run}-split`;
  const note = "<i>shown as text</i>";
  await apiCall("POST", "/transactions", {
    body: {
      id: postings,
      type: "postings",
      postings: [{ from: id, to: payee, amount: 100 }, { from: id, to: payee, amount: 25 }],
      metadata: { note },
    },
  });
  await settled(postings);
  await page.goto(`${url}/console#/transactions/${postings}`);
  const table = page.getByRole("table", { name: /Postings/ });
  await table.getByText("0.25 USD").waitFor();
  // What a client wrote is text, never markup.
  await page.getByText(JSON.stringify({ note })).waitFor();
  assert.equal(await page.locator("main i").count(), 0);
  assert.equal(await table.getByRole("link", { name: payee }).count(), 2);
  await everyControlIsLabelled("transaction");
  await shoot("transaction-postings");

  // The account: its funds, its history (one entry per movement, newest
  // first, two pages of three), and its balance drawn over time.
  await page.goto(`${url}/console#/accounts/${id}`);
  const balance = (await apiCall("GET", `/accounts/${id}`)).body.balance;
  assert.equal(balance, 1234 - 250 - 125);
  await page.locator('[data-field="balance"]').getByText("8.59 USD").waitFor();
  const history = page.getByRole("table", { name: /History of/ });
  await history.getByRole("link", { name: postings }).first().waitFor();
  assert.ok(await history.getByRole("link", { name: credit }).count());
  // Three a page: each page shown is the API's own page.
  const { body: firstPage } = await apiCall("GET", `/accounts/${id}/transactions?limit=3`);
  const { body: secondPage } = await apiCall("GET", `/accounts/${id}/transactions?limit=3&cursor=${encodeURIComponent(firstPage.next_cursor)}`);
  const idsOf = (page) => page.entries.map((e) => e.id ?? "(admin set)");
  const shown = async (pageLabel, ids) => {
    await page.locator('[data-field="page"]').getByText(pageLabel, { exact: true }).waitFor();
    await page.waitForFunction((n) => document.querySelectorAll("table tbody tr").length === n, ids.length);
    assert.deepEqual(await history.locator("tbody tr td:nth-child(2)").allInnerTexts(), ids, pageLabel);
  };
  await page.getByLabel("Per page").fill("3");
  await page.getByRole("button", { name: "Show" }).click();
  await shown("page 1", idsOf(firstPage));
  await page.getByRole("button", { name: "Older" }).click();
  await shown("page 2", idsOf(secondPage));
  await page.getByRole("button", { name: "Newer" }).click();
  await shown("page 1", idsOf(firstPage));
  // A late answer of an earlier Show never replaces a later one's: the
  // first is held back 1 s, the second (two a page) lands first.
  await page.route(/limit=3/, async (route) => {
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await route.continue();
  });
  const late = page.waitForResponse(/limit=3/);
  await page.getByRole("button", { name: "Show" }).click();
  await page.getByLabel("Per page").fill("2");
  await page.getByRole("button", { name: "Show" }).click();
  await shown("page 1", idsOf(firstPage).slice(0, 2));
  await late;
  await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 100)));
  await shown("page 1", idsOf(firstPage).slice(0, 2));
  await page.unroute(/limit=3/);
  const drawn = await page.evaluate(() => {
    const canvas = document.querySelector("canvas");
    const blank = document.createElement("canvas");
    [blank.width, blank.height] = [canvas.width, canvas.height];
    return canvas.width > 0 && canvas.toDataURL() !== blank.toDataURL();
  });
  assert.ok(drawn, "the balance chart drew nothing");
  await page.getByLabel("Per page").fill("20");
  await page.getByRole("button", { name: "Show" }).click();
  await shoot("account");
});

test("a refused action shows the problem's detail", async () => {
  const id = `console-${run}-bounds`;
  const body = { asset: "USD/2", min_balance: 1000, max_balance: 500 };
  await page.goto(`${url}/console#/accounts/${id}`);
  const form = page.getByRole("form", { name: "New account" });
  // Bounds are typed in the asset's units: with none named, nothing is sent.
  await form.getByLabel("Lowest balance").fill("-5");
  await form.getByRole("button", { name: "Create account" }).click();
  await page.getByRole("alert").getByText("Name the asset").waitFor();
  await form.getByLabel("Asset").fill("USD/2");
  await form.getByLabel("Lowest balance").fill("10");
  await form.getByLabel("Highest balance").fill("5");
  await form.getByRole("button", { name: "Create account" }).click();
  const alert = page.getByRole("alert");
  await alert.waitFor();
  // The same body, straight to the API: refused with this detail, nothing written.
  const direct = await apiCall("PUT", `/accounts/${id}`, { token: adminToken, body });
  assert.equal(direct.status, 422);
  assert.match(await text(alert), new RegExp(direct.body.detail.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
  assert.equal((await apiCall("GET", `/accounts/${id}`)).status, 404);
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(screenshots, "refused-phone.png"), fullPage: true });
  await page.setViewportSize(DESKTOP);
});

test("keys: made with the secret shown once, scoped, and refused at once when revoked in the console", async () => {
  const scope = `console-${run}-shop-`;
  await apiCall("PUT", `/accounts/${scope}1`, { token: adminToken, body: { asset: "USD/2" } });
  await apiCall("PUT", `/accounts/console-${run}-other`, { token: adminToken, body: { asset: "USD/2" } });
  await page.goto(`${url}/console#/keys`);
  const form = page.getByRole("form", { name: "New key" });
  await form.getByLabel("Accounts").fill(`${scope}*`);
  await form.getByLabel("Requests a second").fill("50");
  await form.getByRole("button", { name: "Create key" }).click();
  const secret = await text(page.locator('[data-field="secret"]'));
  assert.match(secret, /^txk_[0-9a-f]+_[0-9a-f]{64}$/);
  const keyId = secret.split("_")[1];
  const row = page.getByRole("row").filter({ hasText: keyId });
  await row.getByText(`${scope}*`).waitFor();
  assert.equal((await apiCall("GET", `/accounts/${scope}1`, { token: secret })).status, 200);
  await everyControlIsLabelled("keys");
  await shoot("keys");

  // Signed in with that key, the console sees its accounts and no other.
  const scoped = await browser.newPage({ viewport: DESKTOP });
  scoped.on("pageerror", (error) => errors.push(String(error)));
  await scoped.goto(`${url}/console#/sign-in`);
  await scoped.getByLabel("API key").fill(secret);
  await scoped.getByRole("button", { name: "Sign in" }).click();
  await scoped.waitForURL(/#\/overview$/);
  await scoped.goto(`${url}/console#/accounts/${scope}1`);
  await scoped.locator('[data-field="balance"]').waitFor();
  await scoped.goto(`${url}/console#/accounts/console-${run}-other`);
  const forbidden = await apiCall("GET", `/accounts/console-${run}-other`, { token: secret });
  assert.equal(forbidden.status, 403);
  await scoped.getByRole("alert").getByText(forbidden.body.detail).waitFor();
  await scoped.goto(`${url}/console#/keys`);
  await scoped.getByRole("alert").getByText("this needs the admin token").waitFor();
  await scoped.close();

  // Revoke asks again; then the key is refused on its next request.
  await row.getByRole("button", { name: `Revoke key ${keyId}` }).click();
  await row.getByRole("button", { name: `Revoke ${keyId}` }).click();
  await page.getByRole("row").filter({ hasText: keyId }).waitFor({ state: "detached" });
  assert.equal((await apiCall("GET", `/accounts/${scope}1`, { token: secret })).status, 401);
  const listed = await apiCall("GET", "/admin/keys", { token: adminToken });
  assert.ok(!listed.body.keys.some((key) => key.id === keyId));
  // Shown once: gone from the page after it reloads.
  await page.reload();
  await page.getByRole("table", { name: /Keys/ }).waitFor();
  assert.ok(!(await page.content()).includes(secret));
});

test("no script error and no refused load on any page", () => {
  assert.deepEqual(errors, []);
});
