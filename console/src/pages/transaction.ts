// Transaction: one by id, as GET /transactions/{id} shows it to the key
// held; read again every second until it settles.
import { client, type Transaction } from "../api";
import { accountLink, facts, findForm, h, problemBox, table, transactionLink } from "../dom";
import { formatMoney } from "../money";

const UNSETTLED = new Set(["pending", "capturing"]);

/** What ended a hold, by the phase the API reports. */
const HOLD_ENDED_BY: Record<string, string> = {
  held: "nothing yet: it still holds the money",
  capturing: "a capture, whose credit is on its way",
  captured: "a capture",
  voided: "a void (or a capture whose credit was refused)",
  expired: "its timeout",
};

export function transactionPage(view: HTMLElement, id?: string): () => void {
  view.append(h("h1", {}, id ? `Transaction ${id}` : "Transactions"), findForm("Transaction id", "transactions", id));
  if (!id) {
    view.append(h("p", {}, "Transactions are made from an account's page (Move money), or by your systems through the API."));
    return () => {};
  }
  const body = h("div", { "aria-live": "polite" });
  view.append(body);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let left = false;
  const refresh = async () => {
    try {
      const tx = await client("apiKey").transaction(id);
      body.replaceChildren(show(tx));
      const ending = body.querySelector<HTMLElement>('[data-field="ended-by"]');
      if (ending && tx.account) void findEnd(tx.id, tx.account).then((end) => end && ending.append(" ", end));
      if (!left && UNSETTLED.has(tx.status)) timer = setTimeout(refresh, 1_000);
    } catch (e) {
      body.replaceChildren(problemBox(e));
    }
  };
  void refresh();
  return () => {
    left = true;
    clearTimeout(timer);
  };
}

function show(tx: Transaction): HTMLElement {
  const money = (minor?: number) =>
    minor === undefined ? null : tx.asset ? formatMoney(minor, tx.asset) : `${minor} minor units`;
  const isHold = tx.type === "hold" || HOLD_ENDED_BY[tx.status] !== undefined;
  const sections: HTMLElement[] = [
    facts([
      ["Status", h("span", { class: `status ${tx.status}`, "data-field": "status" }, tx.status)],
      ["Reason", tx.reason ?? null],
      ["Failed posting", tx.posting === undefined ? null : `#${tx.posting}`],
      ["Kind", tx.type ?? null],
      ["Account", tx.account ? accountLink(tx.account) : null],
      ["To", tx.to ? accountLink(tx.to) : null],
      ["Amount", money(tx.amount)],
      ["Hold it ends", tx.hold ? transactionLink(tx.hold) : null],
      ["Balance after", money(tx.balance_after)],
      ["Asset", tx.asset ?? null],
      ["Metadata", tx.metadata ? JSON.stringify(tx.metadata) : null],
    ]),
  ];
  if (isHold) {
    sections.push(
      h("h2", {}, "Hold"),
      facts([
        ["Phase", tx.status],
        ["Ended by", HOLD_ENDED_BY[tx.status] === undefined ? null : h("span", { "data-field": tx.status === "held" ? "still-held" : "ended-by" }, HOLD_ENDED_BY[tx.status])],
        ["Captured", money(tx.captured_amount)],
      ]),
    );
  }
  if (tx.postings) {
    sections.push(
      h("h2", {}, "Postings"),
      table(
        "Postings, applied in order, all or none",
        ["#", "From", "To", "Amount"],
        tx.postings.map((p, i) => [
          tx.posting === i ? `${i} (failed)` : String(i),
          accountLink(p.from),
          accountLink(p.to),
          // The asset of a posting whose from the key may not see is not shown.
          p.asset ? formatMoney(p.amount, p.asset) : `${p.amount} minor units`,
        ]),
      ),
    );
  }
  return h("div", {}, ...sections);
}

/** The transaction that ended hold `holdId`, from its account's history:
 * the capture's, void's or expiry's entry names the hold. Read newest first,
 * at most five pages, and never past the hold's own entry. */
async function findEnd(holdId: string, account: string): Promise<HTMLElement | undefined> {
  const history = client("apiKey");
  let cursor: string | undefined;
  for (let page = 0; page < 5; page++) {
    const { entries, next_cursor } = await history.historyPage(account, { limit: 200, cursor });
    for (const entry of entries) {
      if (entry.hold === holdId && entry.id && entry.id !== holdId) {
        return h("span", {}, "(", transactionLink(entry.id), ")");
      }
      if (entry.id === holdId && entry.type === "hold") return undefined;
    }
    if (!next_cursor) return undefined;
    cursor = next_cursor;
  }
  return undefined;
}
