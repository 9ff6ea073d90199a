// Accounts: find one; make it or change its bounds (admin token); its
// balance, pending and available; move money (API key); its history page by
// page with the API's filters, and its balance over time.
import type { Chart } from "chart.js";

import { client, credit, debit, hold, Problem, transfer, type Account, type Entry, type HistoryQuery, type NewTransaction } from "../api";
import { balanceChart } from "../charts";
import { accountLink, facts, field, findForm, h, problemBox, table, transactionLink } from "../dom";
import { formatMoney, NO_CAP, parseMoney } from "../money";

export function accountsPage(view: HTMLElement, id?: string): () => void {
  view.append(h("h1", {}, id ? `Account ${id}` : "Accounts"), findForm("Account id", "accounts", id));
  const body = h("div");
  view.append(body);
  let leave = () => {};
  let left = false;
  if (id) {
    const show = async () => {
      try {
        const account = await client("apiKey").account(id);
        // Gone to another page meanwhile: draw nothing that outlives it.
        if (!left) leave = showAccount(body, account);
      } catch (e) {
        if (e instanceof Problem && e.status === 404) {
          body.append(h("p", {}, `There is no account ${id} yet.`), accountForm(id));
        } else body.append(problemBox(e));
      }
    };
    void show();
  } else {
    body.append(h("h2", {}, "New account"), accountForm());
  }
  return () => {
    left = true;
    leave();
  };
}

/** Makes an account (no `existing`), or changes an existing one's bounds:
 * amounts typed in major units of its asset. */
function accountForm(id?: string, existing?: Account): HTMLElement {
  const name = h("input", { name: "id", required: true, value: id ?? "", readonly: !!id, autocomplete: "off" });
  const asset = h("input", { name: "asset", value: existing?.asset ?? "", placeholder: "USD/2", readonly: !!existing, autocomplete: "off" });
  const min = h("input", { name: "min_balance", inputmode: "decimal", value: "" });
  const max = h("input", { name: "max_balance", inputmode: "decimal", value: "" });
  if (existing) {
    min.value = formatPlain(existing.min_balance, existing.asset);
    if (existing.max_balance !== NO_CAP) max.value = formatPlain(existing.max_balance, existing.asset);
  }
  const outcome = h("div");
  const form = h(
    "form",
    {
      class: "grid",
      "aria-label": existing ? "Change bounds" : "New account",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        try {
          const code = asset.value.trim() || existing?.asset || "";
          if (!code && (min.value.trim() || max.value.trim())) {
            throw new Error("Name the asset: bounds are typed in its units (the engine's default asset may have decimal places).");
          }
          const change = {
            asset: code || undefined,
            min_balance: min.value.trim() ? parseMoney(min.value, code) : 0,
            max_balance: max.value.trim() ? parseMoney(max.value, code) : NO_CAP,
          };
          const account = name.value.trim();
          await client("adminToken").putAccount(account, change);
          location.hash = `#/accounts/${encodeURIComponent(account)}`;
          // Same hash (a change): show it again from the API.
          window.dispatchEvent(new HashChangeEvent("hashchange"));
        } catch (e) {
          outcome.replaceChildren(problemBox(e));
        }
      },
    },
    field("Account id", name),
    field("Asset", asset, existing ? "fixed once the account is made" : "e.g. USD/2: two decimal places; empty: the engine's default"),
    field("Lowest balance", min, "below 0: an overdraft down to it; empty: 0"),
    field("Highest balance", max, "empty: no cap"),
    h("button", { type: "submit" }, existing ? "Save bounds" : "Create account"),
  );
  return h("div", {}, form, outcome);
}

/** An amount as it is typed back into a form (no grouping). */
function formatPlain(minor: number, asset: string): string {
  return formatMoney(minor, asset).split(" ")[0].replace(/,/g, "");
}

function showAccount(body: HTMLElement, account: Account): () => void {
  const money = (minor: number) => formatMoney(minor, account.asset);
  body.append(
    h(
      "section",
      { "aria-label": "Funds", class: "funds" },
      facts([
        ["Balance", h("span", { "data-field": "balance" }, money(account.balance))],
        ["Pending (held)", h("span", { "data-field": "pending" }, money(account.pending))],
        ["Available", h("span", { "data-field": "available" }, money(account.available))],
        ["Asset", account.asset],
        ["Lowest balance", money(account.min_balance)],
        ["Highest balance", account.max_balance === NO_CAP ? "no cap" : money(account.max_balance)],
        ["Created", account.created_at],
        ["Metadata", account.metadata ? JSON.stringify(account.metadata) : null],
      ]),
    ),
    h("details", {}, h("summary", {}, "Change bounds (admin token)"), accountForm(account.account, account)),
    h("h2", {}, "Move money"),
    transactionForm(account),
  );
  return historySection(body, account);
}

function transactionForm(account: Account): HTMLElement {
  const kind = h(
    "select",
    { name: "type" },
    ...["debit", "credit", "transfer", "hold"].map((k) => h("option", { value: k }, k)),
  );
  const to = h("input", { name: "to", autocomplete: "off", placeholder: "for a transfer or hold" });
  const amount = h("input", { name: "amount", required: true, inputmode: "decimal" });
  const outcome = h("div");
  const form = h(
    "form",
    {
      class: "grid",
      "aria-label": "Move money",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        try {
          const tx = newTransaction(kind.value, account.account, to.value.trim(), parseMoney(amount.value, account.asset));
          await client("apiKey").submit(tx);
          location.hash = `#/transactions/${encodeURIComponent(tx.id)}`;
        } catch (e) {
          outcome.replaceChildren(problemBox(e));
        }
      },
    },
    field("Kind", kind),
    field("To account", to),
    field(`Amount (${account.asset})`, amount, "in major units, e.g. 12.50"),
    h("button", { type: "submit" }, "Submit"),
  );
  return h("div", {}, form, outcome);
}

/** The transaction the form describes, its id made by the client library. */
function newTransaction(kind: string, account: string, to: string, amount: number): NewTransaction {
  switch (kind) {
    case "transfer":
      if (!to) throw new Error("A transfer needs the account it pays: fill in To account.");
      return transfer(account, to, amount);
    case "hold":
      return hold(account, amount, { to: to || undefined });
    default:
      if (to) throw new Error(`A ${kind} moves money of this account only: leave To account empty.`);
      return kind === "credit" ? credit(account, amount) : debit(account, amount);
  }
}

function historySection(body: HTMLElement, account: Account): () => void {
  const since = h("input", { name: "since", type: "datetime-local", step: "1" });
  const until = h("input", { name: "until", type: "datetime-local", step: "1" });
  const limit = h("input", { name: "limit", type: "number", min: "1", max: "1000", value: "20" });
  const results = h("div", { "aria-live": "polite" });
  const canvas = h("canvas", { role: "img", "aria-label": `Balance of ${account.account} over the entries shown` });
  let chart: Chart | undefined;
  // The filters as last shown (Show reads them; the pages keep them), the
  // cursor of each page after the first that led to the one shown, and the
  // number of the latest load: an older load's answer is dropped.
  let filters: HistoryQuery = {};
  let cursors: string[] = [];
  let latest = 0;

  const load = async (pageCursors: string[]) => {
    const mine = ++latest;
    for (const button of results.querySelectorAll("button")) button.disabled = true;
    try {
      const page = await client("apiKey").historyPage(account.account, { ...filters, cursor: pageCursors.at(-1) });
      if (mine !== latest) return;
      cursors = pageCursors;
      chart?.destroy();
      chart = page.entries.length ? balanceChart(canvas, page.entries, account.asset) : undefined;
      results.replaceChildren(historyTable(page.entries, account), pager(page.next_cursor));
    } catch (e) {
      if (mine !== latest) return;
      results.replaceChildren(problemBox(e), pager(undefined));
    }
  };
  const show = () => {
    filters = {
      limit: Number(limit.value) || undefined,
      since: since.value ? new Date(since.value).toISOString() : undefined,
      until: until.value ? new Date(until.value).toISOString() : undefined,
    };
    void load([]);
  };
  const pager = (next?: string) =>
    h(
      "nav",
      { class: "pager", "aria-label": "History pages" },
      h("button", { type: "button", disabled: cursors.length === 0, onclick: () => void load(cursors.slice(0, -1)) }, "Newer"),
      h("span", { "data-field": "page" }, `page ${cursors.length + 1}`),
      h("button", { type: "button", disabled: !next, onclick: () => next && void load([...cursors, next]) }, "Older"),
    );

  body.append(
    h("h2", {}, "History"),
    h(
      "form",
      {
        class: "inline",
        "aria-label": "History filters",
        onsubmit: (event: Event) => {
          event.preventDefault();
          show();
        },
      },
      field("Since (inclusive)", since),
      field("Until (exclusive)", until),
      field("Per page", limit),
      h("button", { type: "submit" }, "Show"),
    ),
    h("div", { class: "chart" }, canvas),
    results,
  );
  show();
  return () => {
    latest++;
    chart?.destroy();
  };
}

function historyTable(entries: Entry[], account: Account): HTMLElement {
  if (!entries.length) return h("p", {}, "No entries in this range.");
  const money = (minor: number) => formatMoney(minor, account.asset);
  return table(
    `History of ${account.account}, newest first`,
    ["When", "Transaction", "Kind", "Status", "Change", "Balance after", "Counterparty"],
    entries.map((e) => [
      e.at,
      e.id ? transactionLink(e.id) : "(admin set)",
      e.posting === undefined ? e.type : `${e.type} #${e.posting}`,
      e.reason ? `${e.status}: ${e.reason}` : e.status,
      h("span", { class: e.delta < 0 ? "out" : e.delta > 0 ? "in" : "" }, money(e.delta)),
      money(e.balance_after),
      e.counterparty ? accountLink(e.counterparty) : "",
    ]),
  );
}
