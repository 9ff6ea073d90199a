// Keys (admin token): list them, make one (its secret shown this once), and
// revoke one after a confirmation.
import { client, type Key, type KeySpec } from "../api";
import { field, h, problemBox, table } from "../dom";

export function keysPage(view: HTMLElement): () => void {
  const list = h("div", { "aria-live": "polite" });
  const created = h("div", { "aria-live": "polite" });
  const refresh = async () => {
    try {
      const keys = await client("adminToken").keys();
      list.replaceChildren(keysTable(keys, refresh));
    } catch (e) {
      list.replaceChildren(problemBox(e));
    }
  };
  view.append(h("h1", {}, "API keys"), h("h2", {}, "New key"), keyForm(created, refresh), created, h("h2", {}, "Keys"), list);
  void refresh();
  return () => {};
}

function keyForm(created: HTMLElement, refresh: () => Promise<void>): HTMLElement {
  const accounts = h("input", { name: "accounts", required: true, placeholder: "alice, shop-*", autocomplete: "off" });
  const rate = h("input", { name: "rate_per_s", type: "number", min: "1", max: "1000000" });
  const burst = h("input", { name: "burst", type: "number", min: "1", max: "1000000" });
  return h(
    "form",
    {
      class: "grid",
      "aria-label": "New key",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        const spec: KeySpec = {
          accounts: accounts.value
            .split(",")
            .map((a) => a.trim())
            .filter(Boolean),
        };
        if (rate.value) spec.rate_per_s = Number(rate.value);
        if (burst.value) spec.burst = Number(burst.value);
        try {
          const key = await client("adminToken").createKey(spec);
          created.replaceChildren(
            h(
              "div",
              { class: "secret", role: "status" },
              h("p", {}, `Key ${key.id} made. Its secret is shown this once: copy it now.`),
              h("output", { "data-field": "secret" }, key.secret),
            ),
          );
          await refresh();
        } catch (e) {
          created.replaceChildren(problemBox(e));
        }
      },
    },
    field("Accounts", accounts, "comma-separated: account ids, prefixes ending in *, or *"),
    field("Requests a second", rate, "empty: no limit"),
    field("Burst", burst, "empty: as many as a second's"),
    h("button", { type: "submit" }, "Create key"),
  );
}

function keysTable(keys: Key[], refresh: () => Promise<void>): HTMLElement {
  if (!keys.length) return h("p", {}, "No keys.");
  return table(
    "Keys, never their secrets",
    ["Id", "Accounts", "Rate / s", "Burst", "Created", ""],
    keys.map((key) => [
      key.id,
      key.accounts.join(", "),
      key.rate_per_s ?? "no limit",
      key.burst ?? "",
      new Date(key.created_at_ms).toISOString(),
      revokeCell(key, refresh),
    ]),
  );
}

/** Revoke asks once more before it acts. */
function revokeCell(key: Key, refresh: () => Promise<void>): HTMLElement {
  const cell = h("div", { class: "revoke" });
  const ask = () => {
    const confirm = h("button", { type: "button", class: "danger", onclick: revoke }, `Revoke ${key.id}`);
    cell.replaceChildren(
      h("span", {}, "Refused at once; cannot be undone. "),
      confirm,
      h("button", { type: "button", onclick: idle }, "Cancel"),
    );
    confirm.focus();
  };
  const idle = () => cell.replaceChildren(h("button", { type: "button", onclick: ask, "aria-label": `Revoke key ${key.id}` }, "Revoke…"));
  const revoke = async () => {
    try {
      await client("adminToken").revokeKey(key.id);
      await refresh();
    } catch (e) {
      cell.replaceChildren(problemBox(e));
    }
  };
  idle();
  return cell;
}
