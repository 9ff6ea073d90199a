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
  const refresh = async () => {
    try {
      const tx = await client("apiKey").transaction(id);
      body.replaceChildren(show(tx));
      if (UNSETTLED.has(tx.status)) timer = setTimeout(refresh, 1_000);
    } catch (e) {
      body.replaceChildren(problemBox(e));
    }
  };
  void refresh();
  return () => clearTimeout(timer);
}

function show(tx: Transaction): HTMLElement {
  const money = (minor?: number, asset = tx.asset) =>
    minor === undefined ? null : asset ? formatMoney(minor, asset) : `${minor} minor units`;
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
        ["Ended by", HOLD_ENDED_BY[tx.status] ?? null],
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
          money(p.amount, p.asset),
        ]),
      ),
    );
  }
  return h("div", {}, ...sections);
}
