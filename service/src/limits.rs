//! Every named limit of the engine, in one leaf module that imports
//! nothing of the crate: the domain, the keys, the HTTP layer, the store
//! and the configuration take their bounds from here, and the OpenAPI
//! document's bounds are checked against these (`http::openapi` tests).

/// Largest amount or balance, in minor units: 2^53 - 1. Lua numbers are
/// doubles, so nothing above this may ever reach a script as a number
/// (the scripts' `MAX` is the same number).
pub const MAX_MINOR_UNITS: u64 = (1 << 53) - 1;

/// Longest account, transaction or key id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Most patterns in one API key's scope.
pub const MAX_SCOPE_PATTERNS: usize = 100;

/// Largest rate (requests per second) and burst an API key may have.
pub const MAX_RATE: u64 = 1_000_000;

/// Largest request body accepted; a transaction is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Most postings in one postings transaction: each is checked and moved
/// inside one script call, which holds Redis while it runs (priced in
/// docs/performance.md, "Postings").
pub const MAX_POSTINGS: usize = 16;

/// Most transactions in one `POST /transactions/batch`.
pub const MAX_BATCH_ITEMS: usize = 1_000;

/// Largest body of `POST /transactions/batch`: 1 KiB an item, four times
/// what the longest transaction takes.
pub const MAX_BATCH_BODY_BYTES: usize = MAX_BATCH_ITEMS * 1024;

/// Transactions of concurrent requests gathered into one claim (or accept)
/// script call ([`crate::gather`]; the last request taken may pass it by
/// its own size, never split), and most such calls in flight at once, each.
pub const MAX_GATHERED: usize = 1_000;
pub const MAX_GATHER_CALLS_IN_FLIGHT: usize = 4;
/// A request of this many transactions or more is not gathered: it makes
/// its own call (amortised already: a claim of 32 ids is one call), at
/// most this many such calls at once per gatherer.
pub const GATHER_BELOW: usize = 32;
pub const MAX_ALONE_CALLS_IN_FLIGHT: usize = 16;
/// Most items waiting for a gatherer's next call; a request past it waits
/// for a place (the queue never grows without limit).
pub const MAX_GATHER_QUEUE: usize = 10_000;

/// Most bytes of a request head (request line and headers); past it hyper
/// answers 431. Hyper's own floor is 8 KiB.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Longest `--key-cache-ms`: the contract refuses a revoked key within 1 s.
pub const MAX_KEY_CACHE_MS: u64 = 1_000;

/// Most API keys cached at once; past it the cache starts over (keys are
/// few; this only bounds memory against a flood of ids).
pub const MAX_CACHED_KEYS: usize = 10_000;

/// How many shards accounts and transaction ids are hashed over on a
/// cluster: each shard is one hash tag, so one slot. Enough to spread over
/// every master (a shard moves with its slot when the cluster reshards).
pub const CLUSTER_SHARDS: u32 = 1024;

/// Most lease releases retried in the background at once (after a Redis
/// error the claim may have landed anyway). Past it the lease is left to
/// run out: the retry of that id meets 409 until then.
pub const MAX_BACKGROUND_RELEASES: usize = 256;

/// Most entries in one page of an account's history, and how many a page
/// holds when `limit` is not given.
pub const MAX_HISTORY_PAGE: usize = 1_000;
pub const DEFAULT_HISTORY_PAGE: usize = 100;

/// Most keys of a transaction's `metadata`, and the longest key and value,
/// in characters.
pub const MAX_METADATA_KEYS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
