// Building the page: elements from data, text always as text (never HTML),
// so nothing an account id or metadata holds can run in the console.

import { describe } from "./api";

type Child = Node | string | number | null | undefined | false;
type Props = Record<string, string | number | boolean | EventListener | undefined>;

/** `<tag ...props>children</tag>`; `on<event>` props are listeners,
 * `false`/`undefined` props are left out. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else if (value !== false && value !== undefined) element.setAttribute(name, String(value));
  }
  element.append(...children.filter((c): c is Node | string | number => c !== null && c !== undefined && c !== false).map((c) => (typeof c === "number" ? String(c) : c)));
  return element;
}

let fields = 0;

/** A labelled control: the label names it for screen readers and tests. */
export function field(label: string, control: HTMLInputElement | HTMLSelectElement, hint?: string): HTMLElement {
  control.id ||= `field-${++fields}`;
  const hintId = hint ? `${control.id}-hint` : undefined;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hint ? h("small", { id: hintId }, hint) : null);
}

/** A problem shown where the action was taken; read out by screen readers. */
export function problemBox(error: unknown): HTMLElement {
  return h("p", { class: "problem", role: "alert" }, describe(error));
}

/** A definition list of label and value pairs; a pair without a value is
 * left out. */
export function facts(pairs: [string, Child][]): HTMLElement {
  const shown = pairs.filter(([, value]) => value !== null && value !== undefined);
  return h("dl", { class: "facts" }, ...shown.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

/** A table with a caption for its purpose. */
export function table(caption: string, head: string[], rows: Child[][]): HTMLElement {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, ...head.map((c) => h("th", { scope: "col" }, c)))),
      // Each cell names its column: a phone's layout shows it beside the value.
      h("tbody", {}, ...rows.map((row) => h("tr", {}, ...row.map((c, i) => h("td", { "data-column": head[i] }, c))))),
    ),
  );
}

/** A search by id that goes to `#/<page>/<id>`. Ids are those the API
 * takes: 1 to 64 of `A-Z a-z 0-9 _ . : -`. */
export function findForm(label: string, page: string, current?: string): HTMLElement {
  const input = h("input", { name: "id", required: true, value: current ?? "", autocomplete: "off", pattern: "[A-Za-z0-9_.:\\-]{1,64}" });
  const go = (event: Event) => {
    event.preventDefault();
    location.hash = `#/${page}/${encodeURIComponent(input.value.trim())}`;
  };
  return h("form", { class: "inline", role: "search", onsubmit: go }, field(label, input), h("button", { type: "submit" }, "Find"));
}

export function link(href: string, text: string): HTMLAnchorElement {
  return h("a", { href }, text);
}

export const accountLink = (id: string) => link(`#/accounts/${encodeURIComponent(id)}`, id);
export const transactionLink = (id: string) => link(`#/transactions/${encodeURIComponent(id)}`, id);
