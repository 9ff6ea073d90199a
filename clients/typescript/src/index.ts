/**
 * A client for txengine's HTTP API (Node 20+, its own `fetch`, no runtime
 * dependency).
 *
 * The retry rules are the Rust and Python clients': a transaction's id is
 * made when it is built, so every retry sends the same transaction; 503,
 * 409 (in flight), timeouts and connection errors are retried with backoff
 * and jitter, never sooner than `Retry-After`, until `retry.maxElapsedMs`; a
 * 429 waits as long as it says; nothing else is retried, and making a key
 * never is (a retry could make two).
 */

export type Kind = "debit" | "credit" | "transfer" | "hold" | "capture" | "void" | "postings";

/** Where a transaction stands. */
export type Status =
  | "pending"
  | "applied"
  | "rejected"
  | "held"
  | "capturing"
  | "captured"
  | "voided"
  | "expired";

/** Where one item of a batch stands. */
export type ItemStatus =
  | "pending"
  | "applied"
  | "rejected"
  | "conflict"
  | "in_flight"
  | "invalid"
  | "forbidden"
  | "rate_limited"
  | "unavailable";

export type Metadata = Record<string, string>;

/** One movement of a postings transaction. */
export interface Posting {
  from: string;
  to: string;
  amount: number;
  asset?: string;
}

/** A transaction to submit, as the API takes it. Build it with `debit`,
 * `transfer` and the others: its id is made then. */
export interface NewTransaction {
  readonly id: string;
  readonly type: Kind;
  readonly account?: string;
  readonly to?: string;
  readonly amount?: number;
  readonly hold?: string;
  readonly timeout_s?: number;
  readonly postings?: readonly Posting[];
  readonly asset?: string;
  readonly metadata?: Metadata;
}

/** What every constructor also takes: your own id, an asset, metadata. */
export interface TransactionOptions {
  id?: string;
  asset?: string;
  metadata?: Metadata;
}

export interface Transaction {
  id: string;
  status: Status;
  /** What was asked (to a key that sees the source): the kind, and for all
   * but postings the account, `to`, the amount; a capture's or void's hold. */
  type?: Kind;
  account?: string;
  to?: string;
  amount?: number;
  hold?: string;
  /** Why it was rejected: `insufficient_funds`, `unknown_account`, ... */
  reason?: string;
  balance_after?: number;
  asset?: string;
  captured_amount?: number;
  /** A rejected postings transaction: the index of the posting that failed. */
  posting?: number;
  postings?: Posting[];
  metadata?: Metadata;
}

export interface ItemResult {
  id: string | null;
  status: ItemStatus;
  reason?: string;
  balance_after?: number;
  posting?: number;
  retry_after_s?: number;
}

export interface Account {
  account: string;
  asset: string;
  min_balance: number;
  max_balance: number;
  balance: number;
  pending: number;
  available: number;
  created_at: string;
  metadata?: Metadata;
}

/** The fields of `putAccount`: each one given replaces the account's. */
export interface AccountSpec {
  asset?: string;
  min_balance?: number;
  max_balance?: number;
  metadata?: Metadata;
}

export interface Balance {
  account: string;
  asset: string;
  balance: number;
  pending: number;
  available: number;
}

export interface BalanceAt {
  account: string;
  balance: number;
  at: string;
  since: string;
}

export interface Entry {
  id?: string;
  type: string;
  amount: number;
  delta: number;
  status: string;
  balance_after: number;
  at: string;
  counterparty?: string;
  hold?: string;
  posting?: number;
  reason?: string;
  metadata?: Metadata;
}

export interface HistoryPage {
  account: string;
  entries: Entry[];
  next_cursor?: string;
}

export interface HistoryQuery {
  limit?: number;
  /** RFC 3339 times. */
  since?: string;
  until?: string;
  /** For `historyPage`: the previous page's `next_cursor`. */
  cursor?: string;
}

export interface KeySpec {
  /** Account ids, prefixes ending in `*`, or `*`. */
  accounts: string[];
  rate_per_s?: number;
  burst?: number;
}

export interface Key {
  id: string;
  accounts: string[];
  rate_per_s?: number | null;
  burst?: number | null;
  created_at_ms: number;
}

export interface CreatedKey extends Key {
  secret: string;
}

/** How long and how often a call retries. */
export interface RetryPolicy {
  /** The most a call spends, from its first try, before it gives up; 0: one try. */
  maxElapsedMs: number;
  /** The first backoff; each retry doubles it up to `maxBackoffMs` and waits a
   * random part of it (full jitter), never less than `Retry-After`. */
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxElapsedMs: 30_000, initialBackoffMs: 100, maxBackoffMs: 5_000 };
export const NEVER: RetryPolicy = { maxElapsedMs: 0, initialBackoffMs: 0, maxBackoffMs: 0 };

/** The statuses retried with the same request: 503, 409 and 429; no other. */
export function isRetriedStatus(status: number): boolean {
  return status === 503 || status === 409 || status === 429;
}

/** The batch statuses the client sends again, with the same id. */
export const RETRIED_ITEM_STATUSES: ReadonlySet<string> = new Set(["in_flight", "rate_limited", "unavailable"]);

/** Whether a transaction has its outcome: not `pending`, and not a hold in
 * the middle of its capture (a `held` hold is settled). */
export function isSettled(status: string): boolean {
  return status !== "pending" && status !== "capturing";
}

/** A UUIDv7: time-ordered, made before the first try. */
export function newId(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  let millis = Date.now();
  for (let i = 5; i >= 0; i--) {
    bytes[i] = millis % 256;
    millis = Math.floor(millis / 256);
  }
  bytes[6] = (bytes[6]! & 0x0f) | 0x70;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function make(type: Kind, fields: Omit<NewTransaction, "id" | "type">, options: TransactionOptions): NewTransaction {
  const { id = newId(), ...rest } = options;
  const tx: Record<string, unknown> = { id, type };
  for (const [name, value] of Object.entries({ ...fields, ...rest })) {
    if (value !== undefined) tx[name] = value;
  }
  return Object.freeze(tx) as unknown as NewTransaction;
}

export function debit(account: string, amount: number, options: TransactionOptions = {}): NewTransaction {
  return make("debit", { account, amount }, options);
}

export function credit(account: string, amount: number, options: TransactionOptions = {}): NewTransaction {
  return make("credit", { account, amount }, options);
}

export function transfer(from: string, to: string, amount: number, options: TransactionOptions = {}): NewTransaction {
  return make("transfer", { account: from, to, amount }, options);
}

/** Reserves `amount` of `account` until a capture, a void or its timeout; a
 * capture moves it to `to` (a debit when there is none). */
export function hold(
  account: string,
  amount: number,
  options: TransactionOptions & { to?: string; timeout_s?: number } = {},
): NewTransaction {
  const { to, timeout_s, ...rest } = options;
  return make("hold", { account, amount, to, timeout_s }, rest);
}

/** Moves all of a hold, or `amount` of it (the rest is released). */
export function capture(holdId: string, amount?: number, options: TransactionOptions = {}): NewTransaction {
  return make("capture", { hold: holdId, amount }, options);
}

export function voidHold(holdId: string, options: TransactionOptions = {}): NewTransaction {
  return make("void", { hold: holdId }, options);
}

/** Several movements, in order, all or none. */
export function postings(moves: Posting[], options: TransactionOptions = {}): NewTransaction {
  return make("postings", { postings: moves }, options);
}

/** Every error of this client. */
export class TxEngineError extends Error {}

/** A refusal: the API's `application/problem+json` answer. */
export class Problem extends TxEngineError {
  constructor(
    readonly status: number,
    /** `rule-broken`, `not-found`, `unavailable`, ... */
    readonly slug: string,
    readonly title: string,
    readonly detail: string,
    /** The transaction it is about, when one was claimed: after a 503 it may
     * still be applied, so retry with this id, never a new one. */
    readonly id: string | undefined,
  ) {
    super(`${status} ${slug}: ${detail}`);
    this.name = "Problem";
  }

  static of(status: number, body: unknown): Problem {
    const b = (body ?? {}) as Record<string, unknown>;
    if (typeof b.type === "string") {
      const slug = b.type.replace(/^urn:txengine:problem:/, "");
      const id = typeof b.id === "string" ? b.id : undefined;
      return new Problem(Number(b.status ?? status), slug, String(b.title ?? ""), String(b.detail ?? ""), id);
    }
    return new Problem(status, "unknown", "", String(body), undefined);
  }
}

/** Retried until the caller's bound and still not taken. For a transaction,
 * `id` is the one to retry with later: it may yet be applied, and a new id
 * could apply it twice. */
export class RetriesExhausted extends TxEngineError {
  constructor(
    readonly id: string | undefined,
    readonly attempts: number,
    readonly elapsedMs: number,
    readonly last: unknown,
  ) {
    super(`gave up after ${attempts} tries in ${elapsedMs} ms${id ? ` (retry with id ${id})` : ""}: ${String(last)}`);
    this.name = "RetriesExhausted";
  }

  /** The refusal of the last try, if it was one. */
  get problem(): Problem | undefined {
    return this.last instanceof Problem ? this.last : undefined;
  }
}

/** `wait` reached its deadline with the transaction still unsettled. */
export class WaitTimedOut extends TxEngineError {
  constructor(
    readonly id: string,
    readonly status: string,
    readonly waitedMs: number,
  ) {
    super(`transaction ${id} still ${status} after ${waitedMs} ms`);
    this.name = "WaitTimedOut";
  }
}

/** No answer: a connection error or a try's timeout. */
export class TransportError extends TxEngineError {
  constructor(readonly cause: unknown) {
    super(`no answer: ${String(cause)}`);
    this.name = "TransportError";
  }
}

export interface ClientOptions {
  /** An API key, or the admin token for the admin calls. */
  token?: string;
  /** Each try's timeout (default 10 s). */
  tryTimeoutMs?: number;
  retry?: RetryPolicy;
}

/** An id as one path segment: whatever it holds, it names that resource
 * and no other path. */
const segment = (id: string) => encodeURIComponent(id);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The wait before retry `attempt` (1-based): a random part of the doubled
 * backoff, and never less than what the server asked. */
export function backoff(policy: RetryPolicy, attempt: number, atLeastMs: number): number {
  const doubled = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * 2 ** Math.min(attempt - 1, 16));
  return Math.max(doubled * Math.random(), atLeastMs);
}

interface Answer {
  status: number;
  body: unknown;
}

/** A client of one engine with one token. */
export class Client {
  readonly baseUrl: string;
  readonly token: string | undefined;
  readonly tryTimeoutMs: number;
  readonly retry: RetryPolicy;

  constructor(baseUrl: string, options: ClientOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.token = options.token;
    this.tryTimeoutMs = options.tryTimeoutMs ?? 10_000;
    this.retry = options.retry ?? DEFAULT_RETRY;
  }

  /** The same client sending another token. */
  withToken(token: string): Client {
    return new Client(this.baseUrl, { token, tryTimeoutMs: this.tryTimeoutMs, retry: this.retry });
  }

  withRetry(retry: RetryPolicy): Client {
    return new Client(this.baseUrl, { token: this.token, tryTimeoutMs: this.tryTimeoutMs, retry });
  }

  /** Submits a transaction: `pending` once the broker has it, or its outcome
   * when it was already settled (the same id again). */
  async submit(tx: NewTransaction): Promise<Transaction> {
    return success(await this.send("POST", "/transactions", tx, { id: tx.id })) as Transaction;
  }

  /** Up to 1,000 transactions: one result per item, in order. Items answered
   * `in_flight`, `rate_limited` or `unavailable` are sent again with their ids
   * within the retry bound; past it they keep that status, and their ids are
   * the ones to retry with. */
  async submitBatch(items: readonly NewTransaction[]): Promise<ItemResult[]> {
    const started = Date.now();
    const results: ItemResult[] = new Array(items.length);
    let open = items.map((_, i) => i);
    for (let attempt = 1; ; attempt++) {
      const body = { transactions: open.map((i) => items[i]) };
      const answer = success(await this.send("POST", "/transactions/batch", body, { started })) as {
        results: ItemResult[];
      };
      if (answer.results.length !== open.length) {
        throw new TxEngineError(`${answer.results.length} results for ${open.length} items`);
      }
      const again: number[] = [];
      let askedMs = 0;
      open.forEach((i, n) => {
        const result = answer.results[n]!;
        results[i] = result;
        if (RETRIED_ITEM_STATUSES.has(result.status)) {
          again.push(i);
          askedMs = Math.max(askedMs, (result.retry_after_s ?? 0) * 1000);
        }
      });
      const wait = backoff(this.retry, attempt, askedMs);
      if (again.length === 0 || Date.now() - started + wait > this.retry.maxElapsedMs) return results;
      await sleep(wait);
      open = again;
    }
  }

  async transaction(id: string): Promise<Transaction> {
    return (await this.get(`/transactions/${segment(id)}`)) as Transaction;
  }

  /** Polls a transaction until it is settled, backing off from 20 ms to 1 s;
   * `WaitTimedOut` after `deadlineMs`. */
  async wait(id: string, deadlineMs = 30_000): Promise<Transaction> {
    const started = Date.now();
    let pause = 20;
    for (;;) {
      const tx = await this.transaction(id);
      if (isSettled(tx.status)) return tx;
      const waited = Date.now() - started;
      if (waited >= deadlineMs) throw new WaitTimedOut(id, tx.status, waited);
      await sleep(Math.min(pause, deadlineMs - waited));
      pause = Math.min(pause * 2, 1_000);
    }
  }

  async account(account: string): Promise<Account> {
    return (await this.get(`/accounts/${segment(account)}`)) as Account;
  }

  async balance(account: string): Promise<Balance> {
    return (await this.get(`/balance/${segment(account)}`)) as Balance;
  }

  /** The balance at `at` (an RFC 3339 time). */
  async balanceAt(account: string, at: string): Promise<BalanceAt> {
    return (await this.get(`/balance/${segment(account)}`, { at })) as BalanceAt;
  }

  /** One page of an account's entries, newest first; its `next_cursor`, as
   * the query's `cursor`, reads the next. */
  async historyPage(account: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    return (await this.get(`/accounts/${segment(account)}/transactions`, { ...query })) as HistoryPage;
  }

  /** An account's entries, newest first, read page by page as the iteration goes. */
  async *history(account: string, query: HistoryQuery = {}): AsyncGenerator<Entry, void, undefined> {
    let cursor: string | undefined;
    do {
      const page = await this.historyPage(account, { ...query, cursor });
      yield* page.entries;
      cursor = page.next_cursor ?? undefined;
    } while (cursor !== undefined);
  }

  /** Admin: makes an account or changes the fields given. */
  async putAccount(account: string, spec: AccountSpec): Promise<Account> {
    return success(await this.send("PUT", `/accounts/${segment(account)}`, spec)) as Account;
  }

  /** Admin: sets a balance (within the account's bounds). */
  async setBalance(account: string, balance: number): Promise<Balance> {
    return success(await this.send("PUT", `/balance/${segment(account)}`, { balance })) as Balance;
  }

  /** Admin: makes a key (its secret is shown only here). Never retried. */
  async createKey(spec: KeySpec): Promise<CreatedKey> {
    return success(await this.send("POST", "/admin/keys", spec, { retried: false })) as CreatedKey;
  }

  async keys(): Promise<Key[]> {
    return ((await this.get("/admin/keys")) as { keys: Key[] }).keys;
  }

  async revokeKey(id: string): Promise<void> {
    success(await this.send("DELETE", `/admin/keys/${segment(id)}`));
  }

  private async get(path: string, params: Record<string, string | number | undefined> = {}): Promise<unknown> {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined) query.set(name, String(value));
    }
    const search = query.size ? `?${query}` : "";
    return success(await this.send("GET", path + search));
  }

  /** Tries a request until an answer that is not retried, or until the
   * retry bound (counted from `started`). */
  private async send(
    method: string,
    path: string,
    body?: unknown,
    options: { id?: string; started?: number; retried?: boolean } = {},
  ): Promise<Answer> {
    const started = options.started ?? Date.now();
    const retried = (options.retried ?? true) && this.retry.maxElapsedMs > 0;
    for (let attempt = 1; ; attempt++) {
      let error: unknown;
      let askedMs = 0;
      try {
        const { answer, retryAfterMs } = await this.tryOnce(method, path, body);
        if (!isRetriedStatus(answer.status)) return answer;
        error = Problem.of(answer.status, answer.body);
        askedMs = retryAfterMs;
      } catch (e) {
        if (!(e instanceof TransportError)) throw e;
        error = e;
      }
      const wait = backoff(this.retry, attempt, askedMs);
      const elapsed = Date.now() - started;
      if (!retried || elapsed + wait > this.retry.maxElapsedMs) {
        if (attempt === 1 && !retried) throw error;
        throw new RetriesExhausted(options.id, attempt, elapsed, error);
      }
      await sleep(wait);
    }
  }

  private async tryOnce(
    method: string,
    path: string,
    body: unknown,
  ): Promise<{ answer: Answer; retryAfterMs: number }> {
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response: Response;
    let text: string;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.tryTimeoutMs),
      });
      text = await response.text();
    } catch (e) {
      throw new TransportError(e);
    }
    let parsed: unknown = null;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    const retryAfter = Number(response.headers.get("retry-after"));
    return {
      answer: { status: response.status, body: parsed },
      retryAfterMs: Number.isFinite(retryAfter) ? retryAfter * 1000 : 0,
    };
  }
}

function success(answer: Answer): unknown {
  if (answer.status >= 200 && answer.status < 300) return answer.body;
  throw Problem.of(answer.status, answer.body);
}
