// Every call the console makes, through the engine's public HTTP API only:
// the console can do nothing the credentials it holds could not do with curl.

/** An API key (money endpoints) and the admin token (accounts' bounds,
 * balances, keys); the operator gives one or both. Kept in this tab's
 * sessionStorage: gone when the tab closes. */
export interface Credentials {
  apiKey?: string;
  adminToken?: string;
}

const STORED = "txengine.console.credentials";

export function storedCredentials(): Credentials {
  try {
    return JSON.parse(sessionStorage.getItem(STORED) ?? "{}") as Credentials;
  } catch {
    return {};
  }
}

export function storeCredentials(credentials: Credentials): void {
  sessionStorage.setItem(STORED, JSON.stringify(credentials));
}

export function forgetCredentials(): void {
  sessionStorage.removeItem(STORED);
}

/** A refusal as the API words it (RFC 9457 problem details). */
export class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
  ) {
    super(detail ? `${title}: ${detail}` : title);
  }
}

/** Which credential an endpoint takes. */
export type Credential = "apiKey" | "adminToken" | "none";

async function call<T>(credential: Credential, method: string, path: string, body?: unknown, given?: string): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (credential !== "none") {
    const secret = given ?? storedCredentials()[credential];
    if (!secret) {
      const name = credential === "apiKey" ? "an API key" : "the admin token";
      throw new Refusal(401, "Not signed in", `this needs ${name}: sign in with it first`);
    }
    headers.authorization = `Bearer ${secret}`;
  }
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const json: unknown = text ? JSON.parse(text) : undefined;
  // /ready answers its body with 503 too: that is data, not a refusal.
  if (!response.ok && !(path === "/ready" && response.status === 503)) {
    const problem = (json ?? {}) as { title?: string; detail?: string };
    throw new Refusal(response.status, problem.title ?? response.statusText, problem.detail ?? "");
  }
  return json as T;
}

export interface Account {
  account: string;
  asset: string;
  min_balance: number;
  max_balance: number;
  balance: number;
  pending: number;
  available: number;
  metadata?: Record<string, string>;
  created_at: string;
}

export interface AccountChange {
  asset?: string;
  min_balance?: number;
  max_balance?: number;
}

export interface Entry {
  id?: string;
  type: string;
  amount: number;
  delta: number;
  counterparty?: string;
  status: string;
  reason?: string;
  balance_after: number;
  at: string;
  hold?: string;
  posting?: number;
  metadata?: Record<string, string>;
}

export interface HistoryPage {
  account: string;
  entries: Entry[];
  next_cursor?: string;
}

export interface HistoryQuery {
  limit?: number;
  cursor?: string;
  since?: string;
  until?: string;
}

export interface Posting {
  from: string;
  to: string;
  amount: number;
  asset?: string;
}

export interface Transaction {
  id: string;
  status: string;
  type?: string;
  account?: string;
  to?: string;
  amount?: number;
  hold?: string;
  reason?: string;
  posting?: number;
  balance_after?: number;
  captured_amount?: number;
  asset?: string;
  postings?: Posting[];
  metadata?: Record<string, string>;
}

export interface NewTransaction {
  id: string;
  type: "debit" | "credit" | "transfer" | "hold";
  account: string;
  to?: string;
  amount: number;
  asset?: string;
}

export interface Key {
  id: string;
  accounts: string[];
  rate_per_s?: number;
  burst?: number;
  created_at_ms: number;
}

export interface CreatedKey extends Key {
  secret: string;
}

export interface KeySpec {
  accounts: string[];
  rate_per_s?: number;
  burst?: number;
}

export interface Readiness {
  redis: boolean;
  kafka: boolean;
  backlog?: { records: number; max_records: number; shedding: boolean };
  stalled?: { topic: string; partition: number; offset: number; since: string; id?: string; error?: string };
}

const path = (...parts: string[]) => parts.map(encodeURIComponent).join("/");

export const api = {
  account: (id: string) => call<Account>("apiKey", "GET", `/accounts/${path(id)}`),
  putAccount: (id: string, change: AccountChange) =>
    call<Account>("adminToken", "PUT", `/accounts/${path(id)}`, change),
  history: (id: string, query: HistoryQuery) => {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== "") params.set(name, String(value));
    }
    return call<HistoryPage>("apiKey", "GET", `/accounts/${path(id)}/transactions?${params}`);
  },
  transaction: (id: string) => call<Transaction>("apiKey", "GET", `/transactions/${path(id)}`),
  submit: (tx: NewTransaction) => call<Transaction>("apiKey", "POST", "/transactions", tx),
  keys: () => call<{ keys: Key[] }>("adminToken", "GET", "/admin/keys"),
  createKey: (spec: KeySpec) => call<CreatedKey>("adminToken", "POST", "/admin/keys", spec),
  revokeKey: (id: string) => call<void>("adminToken", "DELETE", `/admin/keys/${path(id)}`),
  /** Whether the API takes `secret` as an API key: a transaction no one
   * made is 404 to a valid key, 401 to any other. */
  checkApiKey: (secret: string) =>
    call<Transaction>("apiKey", "GET", `/transactions/console-sign-in-${crypto.randomUUID()}`, undefined, secret).catch((e) => {
      if (!(e instanceof Refusal && e.status === 404)) throw e;
    }),
  checkAdminToken: (secret: string) => call<{ keys: Key[] }>("adminToken", "GET", "/admin/keys", undefined, secret),
  // The stalled record's id and error are shown to the admin token only.
  ready: () => call<Readiness>(storedCredentials().adminToken ? "adminToken" : "none", "GET", "/ready"),
  metrics: async () => {
    const response = await fetch("/metrics");
    if (!response.ok) throw new Refusal(response.status, response.statusText, "");
    return response.text();
  },
};
