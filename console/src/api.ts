// Every call the console makes, through the engine's public HTTP API only,
// with txengine's own TypeScript client (clients/typescript, bundled from its
// sources): the console can do nothing the credentials it holds could not do
// with curl.
import { Client, newId, Problem, RetriesExhausted, type RetryPolicy } from "../../clients/typescript/src/index";

export type {
  Account,
  AccountSpec,
  CreatedKey,
  Entry,
  HistoryPage,
  HistoryQuery,
  Key,
  KeySpec,
  NewTransaction,
  Transaction,
} from "../../clients/typescript/src/index";
export { credit, debit, hold, transfer } from "../../clients/typescript/src/index";

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

/** What the console says of a call that failed: the API's own title and
 * detail for a refusal. */
export function describe(error: unknown): string {
  const refusal = error instanceof RetriesExhausted ? (error.problem ?? error) : error;
  if (refusal instanceof Problem) return refusal.title ? `${refusal.title}: ${refusal.detail}` : refusal.detail;
  return refusal instanceof Error ? refusal.message : String(refusal);
}

/** A person is waiting: 503, 409 and 429 are retried (with the same id) for
 * a few seconds, not the library's default half a minute. */
const RETRY: RetryPolicy = { maxElapsedMs: 5_000, initialBackoffMs: 100, maxBackoffMs: 1_000 };

/** Which credential an endpoint takes. */
export type Credential = "apiKey" | "adminToken";

/** A client of this engine with `credential` (the one held, or `given`). */
export function client(credential: Credential, given?: string): Client {
  const token = given ?? storedCredentials()[credential];
  if (!token) {
    const name = credential === "apiKey" ? "an API key" : "the admin token";
    throw new Problem(401, "unauthorized", "Not signed in", `this needs ${name}: sign in with it first`, undefined);
  }
  return new Client(location.origin, { token, retry: RETRY });
}

/** What the Overview reads: readiness (200, or 503 with the same body). */
export interface Readiness {
  redis: boolean;
  kafka: boolean;
  backlog?: { records: number; max_records: number; shedding: boolean };
  stalled?: { topic: string; partition: number; offset: number; since: string; id?: string; error?: string };
}

/** `/ready` (with the admin token, when held: a stall's id and error are
 * shown to it only) and `/metrics`, which the client library does not read. */
export const operations = {
  async ready(): Promise<Readiness> {
    const token = storedCredentials().adminToken;
    const response = await fetch("/ready", { headers: token ? { authorization: `Bearer ${token}` } : {} });
    if (!response.ok && response.status !== 503) throw Problem.of(response.status, await response.json());
    return (await response.json()) as Readiness;
  },
  async metrics(): Promise<string> {
    const response = await fetch("/metrics");
    if (!response.ok) throw Problem.of(response.status, await response.text());
    return response.text();
  },
};

/** Whether the API takes `secret` as an API key: a transaction no one made
 * is 404 to a valid key, 401 to any other. */
export async function checkApiKey(secret: string): Promise<void> {
  try {
    await client("apiKey", secret).transaction(`console-sign-in-${newId()}`);
  } catch (e) {
    if (!(e instanceof Problem && e.status === 404)) throw e;
  }
}

export async function checkAdminToken(secret: string): Promise<void> {
  await client("adminToken", secret).keys();
}

export { Problem };
