// The console's frame: the navigation, who is signed in, and the page the
// address's hash names (#/overview, #/accounts/<id>, #/transactions/<id>,
// #/keys, #/sign-in).
import { forgetCredentials, storedCredentials } from "./api";
import { h } from "./dom";
import { accountsPage } from "./pages/accounts";
import { keysPage } from "./pages/keys";
import { overview } from "./pages/overview";
import { signInPage } from "./pages/signin";
import { transactionPage } from "./pages/transaction";

const view = document.getElementById("view") as HTMLElement;
const who = document.getElementById("who") as HTMLElement;
let leave: () => void = () => {};
/** Stands for an id the API would not take. */
const INVALID = "\u0000";

function route(): void {
  leave();
  view.replaceChildren();
  const [, page = "", encoded] = location.hash.split("/");
  const id = idOf(encoded);
  const held = storedCredentials();
  for (const link of document.querySelectorAll<HTMLAnchorElement>("nav.main a")) {
    const current = link.getAttribute("href") === `#/${page}`;
    link.toggleAttribute("aria-current", current);
    if (current) link.setAttribute("aria-current", "page");
  }
  who.replaceChildren(
    held.apiKey || held.adminToken
      ? h(
          "span",
          {},
          `Signed in with ${[held.apiKey && "an API key", held.adminToken && "the admin token"].filter(Boolean).join(" and ")} `,
          h("button", { type: "button", onclick: signOut }, "Sign out"),
        )
      : h("a", { href: "#/sign-in" }, "Sign in"),
  );
  if (id === INVALID) {
    view.append(h("h1", {}, "Not an id"), h("p", { role: "alert", class: "problem" }, "Ids are 1 to 64 of A-Z a-z 0-9 _ . : - (not . or ..)."));
    return;
  }
  switch (page) {
    case "overview":
      leave = overview(view);
      break;
    case "accounts":
      leave = accountsPage(view, id);
      break;
    case "transactions":
      leave = transactionPage(view, id);
      break;
    case "keys":
      leave = keysPage(view);
      break;
    case "sign-in":
      leave = signInPage(view, () => (location.hash = "#/overview"));
      break;
    default:
      location.replace(held.apiKey || held.adminToken ? "#/overview" : "#/sign-in");
      return;
  }
  document.title = `${view.querySelector("h1")?.textContent ?? "Console"} · txengine`;
  // Keyboard and screen-reader users start on the new page, unless the page
  // put the focus in a field itself.
  if (!view.contains(document.activeElement)) view.focus();
}

/** The id the address names, if it is one the API takes (1 to 64 of
 * `A-Z a-z 0-9 _ . : -`, not `.` or `..`); anything else, a malformed
 * escape included, names none and the page says so. */
function idOf(encoded: string | undefined): string | undefined {
  if (encoded === undefined || encoded === "") return undefined;
  let id: string;
  try {
    id = decodeURIComponent(encoded);
  } catch {
    return INVALID;
  }
  return /^[A-Za-z0-9_.:-]{1,64}$/.test(id) && id !== "." && id !== ".." ? id : INVALID;
}

function signOut(): void {
  forgetCredentials();
  location.hash = "#/sign-in";
}

window.addEventListener("hashchange", route);
route();
