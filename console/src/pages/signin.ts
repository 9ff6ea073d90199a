// Sign in: an API key (reads and money) and the admin token (accounts'
// bounds, keys), either or both, kept in this tab's sessionStorage only.
import { checkAdminToken, checkApiKey, describe, storeCredentials, storedCredentials } from "../api";
import { field, h } from "../dom";

export function signInPage(view: HTMLElement, onSignedIn: () => void): () => void {
  const held = storedCredentials();
  const apiKey = h("input", { name: "api_key", type: "password", autocomplete: "off" });
  const adminToken = h("input", { name: "admin_token", type: "password", autocomplete: "off" });
  // As properties, never attributes: the secrets stay out of the markup.
  apiKey.value = held.apiKey ?? "";
  adminToken.value = held.adminToken ?? "";
  const problem = h("p", { role: "alert", class: "problem-text" });
  view.append(
    h("h1", {}, "Sign in"),
    h(
      "p",
      { class: "lead" },
      "The console calls the engine's HTTP API with what you give here, and can do nothing that it does not allow: a key scoped to some accounts sees only those. It is kept in this tab until the tab closes.",
    ),
    h(
      "form",
      {
        class: "grid",
        "aria-label": "Sign in",
        onsubmit: async (event: Event) => {
          event.preventDefault();
          const credentials = {
            apiKey: apiKey.value.trim() || undefined,
            adminToken: adminToken.value.trim() || undefined,
          };
          if (!credentials.apiKey && !credentials.adminToken) {
            problem.textContent = "Give an API key, the admin token, or both.";
            return;
          }
          // Each is tried once against the API; one it refuses is not kept.
          try {
            if (credentials.apiKey) await checkApiKey(credentials.apiKey).catch(refused("The API key"));
            if (credentials.adminToken) await checkAdminToken(credentials.adminToken).catch(refused("The admin token"));
          } catch (e) {
            problem.textContent = e instanceof Error ? e.message : String(e);
            return;
          }
          storeCredentials(credentials);
          onSignedIn();
        },
      },
      field("API key", apiKey, "txk_…: accounts, balances, history, transactions"),
      field("Admin token", adminToken, "making and changing accounts, keys"),
      h("button", { type: "submit" }, "Sign in"),
    ),
    problem,
  );
  apiKey.focus();
  return () => {};
}

/** A refusal of the credential `what`, said so. */
function refused(what: string): (error: unknown) => never {
  return (error) => {
    throw new Error(`${what} was refused: ${describe(error)}`);
  };
}
