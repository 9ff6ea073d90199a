//! API keys: who may call the money endpoints, on which accounts, and how
//! often. The types and rules only; the store keeps keys in Redis and the
//! HTTP layer asks. Knows no axum or redis.
//!
//! A secret reads `txk_<key id>_<64 hex digits>`: the key id (public: it
//! names the key in lists, logs and metrics) and 256 random bits. Redis keeps
//! only the SHA-256 of the whole secret (enough for a secret of that entropy,
//! NIST SP 800-63B 5.1.2.2); a presented secret is hashed and compared in
//! constant time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{AccountId, Movement, RuleError};
use crate::limits::MAX_ID_LEN;

/// What every secret starts with, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "txk_";
/// Random bytes in a secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Random bytes in a key id (64 bits: admins make few keys, and a clash is
/// refused by the store).
const ID_BYTES: usize = 8;
use crate::limits::MAX_CACHED_KEYS;
use crate::limits::{MAX_RATE, MAX_SCOPE_PATTERNS};

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key's public id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        if raw.len() == ID_BYTES * 2 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RuleError::BadKeyId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hex SHA-256 of a secret: what Redis keeps.
pub fn hash_secret(secret: &str) -> String {
    // One allocation: the profile showed a String per byte here, per request.
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// A fresh key id and its secret (shown once, to the admin who made it).
pub fn generate() -> (KeyId, String) {
    let id = KeyId(random_hex(ID_BYTES));
    let secret = format!("{SECRET_PREFIX}{id}_{}", random_hex(SECRET_BYTES));
    (id, secret)
}

/// The key id a presented secret names, or `None` when it is not shaped
/// like a secret at all. Says nothing about whether the secret is right.
pub fn key_id_of(secret: &str) -> Option<KeyId> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let (id, random) = rest.split_once('_')?;
    (random.len() == SECRET_BYTES * 2)
        .then(|| KeyId::parse(id).ok())
        .flatten()
}

/// One entry of a scope: `*`, a prefix ending in `*`, or one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountPattern {
    Any,
    Prefix(String),
    Exact(AccountId),
}

impl AccountPattern {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadScope {
            pattern: raw.chars().take(80).collect(),
        };
        match raw.strip_suffix('*') {
            Some("") => Ok(Self::Any),
            Some(prefix) => {
                // The prefix of an account id: the id alphabet, no `*` inside.
                AccountId::parse(prefix).map_err(|_| bad())?;
                if prefix.len() >= MAX_ID_LEN {
                    return Err(bad());
                }
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => AccountId::parse(raw).map(Self::Exact).map_err(|_| bad()),
        }
    }

    pub fn matches(&self, account: &AccountId) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => account.as_str().starts_with(prefix.as_str()),
            Self::Exact(exact) => exact == account,
        }
    }
}

impl fmt::Display for AccountPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Exact(account) => write!(f, "{account}"),
        }
    }
}

/// The accounts a key may touch: 1 ..= [`MAX_SCOPE_PATTERNS`] patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(Vec<AccountPattern>);

impl Scope {
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, RuleError> {
        if raw.is_empty() || raw.len() > MAX_SCOPE_PATTERNS {
            return Err(RuleError::ScopeSize);
        }
        raw.iter()
            .map(|p| AccountPattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn allows(&self, account: &AccountId) -> bool {
        self.0.iter().any(|p| p.matches(account))
    }

    /// The account of `movement` this scope lacks, if any. Money may move
    /// out of (debit, transfer source, every posting's `from`) or into
    /// (credit) matching accounts only: a transfer or posting may pay any
    /// destination.
    pub fn refuses<'a>(&self, movement: &'a Movement) -> Option<&'a AccountId> {
        movement
            .sources()
            .into_iter()
            .find(|account| !self.allows(account))
    }

    /// The patterns as given (normalised), for lists and storage.
    pub fn patterns(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// A key's rate limit: a sustained rate and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate_per_s: u64,
    pub burst: u64,
}

impl RateLimit {
    /// No limit when both are absent; a burst alone is refused; the burst
    /// defaults to one second's worth.
    pub fn parse(rate_per_s: Option<u64>, burst: Option<u64>) -> Result<Option<Self>, RuleError> {
        let in_range = |n: u64, field| {
            if (1..=MAX_RATE).contains(&n) {
                Ok(n)
            } else {
                Err(RuleError::LimitOutOfRange { field })
            }
        };
        match (rate_per_s, burst) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(RuleError::Missing("rate_per_s")),
            (Some(rate), burst) => {
                let rate_per_s = in_range(rate, "rate_per_s")?;
                let burst = in_range(burst.unwrap_or(rate_per_s), "burst")?;
                Ok(Some(Self { rate_per_s, burst }))
            }
        }
    }

    /// Microseconds between two requests at the sustained rate, rounded up
    /// (so the limit is never above the rate).
    pub fn interval_us(&self) -> u64 {
        1_000_000u64.div_ceil(self.rate_per_s)
    }
}

/// An API key as the store keeps it (the secret only as its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: KeyId,
    pub secret_hash: String,
    pub scope: Scope,
    pub limit: Option<RateLimit>,
    pub created_at_ms: u64,
}

impl ApiKey {
    /// True when `secret` is this key's, compared in constant time.
    pub fn verifies(&self, secret: &str) -> bool {
        hash_secret(secret)
            .as_bytes()
            .ct_eq(self.secret_hash.as_bytes())
            .into()
    }
}

/// Keys read from Redis, each kept for at most `ttl`: a revoked key is
/// refused by every API process within `ttl` of its deletion.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<KeyId, (Instant, Arc<ApiKey>)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, id: &KeyId) -> Option<Arc<ApiKey>> {
        let entries = self.entries.lock().expect("key cache lock");
        entries
            .get(id)
            .filter(|(read_at, _)| read_at.elapsed() < self.ttl)
            .map(|(_, key)| key.clone())
    }

    /// Caches `key`, read from Redis at `read_at` (before the read began,
    /// so the entry never outlives the ttl counted from what Redis said).
    pub fn insert(&self, key: Arc<ApiKey>, read_at: Instant) {
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= MAX_CACHED_KEYS {
            entries.clear();
        }
        entries.insert(key.id.clone(), (read_at, key));
    }

    pub fn remove(&self, id: &KeyId) {
        self.entries.lock().expect("key cache lock").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Amount;

    /// Keys already in Redis were hashed this way: lowercase hex SHA-256.
    #[test]
    fn a_secret_hashes_to_lowercase_hex_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn account(raw: &str) -> AccountId {
        AccountId::parse(raw).unwrap()
    }

    #[test]
    fn a_generated_secret_names_its_key_and_verifies_only_itself() {
        let (id, secret) = generate();
        assert!(secret.starts_with("txk_"));
        assert_eq!(key_id_of(&secret), Some(id.clone()));
        let key = unlimited(&id, &secret);
        assert!(key.verifies(&secret));
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push(if secret.ends_with('0') { '1' } else { '0' });
        assert!(!key.verifies(&wrong));
        assert!(!key.verifies(""));
        let (_, other) = generate();
        assert_ne!(other, secret);
    }

    #[test]
    fn secrets_of_the_wrong_shape_name_no_key() {
        let (id, secret) = generate();
        assert_eq!(key_id_of(&secret[..secret.len() - 1]), None);
        assert_eq!(key_id_of(&format!("{secret}0")), None);
        assert_eq!(key_id_of(&secret.replacen("txk_", "txx_", 1)), None);
        assert_eq!(
            key_id_of(&format!(
                "txk_{}_{}",
                id.as_str().to_uppercase(),
                "0".repeat(64)
            )),
            None
        );
        assert_eq!(key_id_of(&format!("txk_{id}_{}", "0".repeat(64))), Some(id));
    }

    #[test]
    fn scopes_match_exact_ids_prefixes_and_everything() {
        let scope = Scope::parse(&["alice", "shop-*"]).unwrap();
        assert!(scope.allows(&account("alice")));
        assert!(!scope.allows(&account("alice2")));
        assert!(scope.allows(&account("shop-1")));
        assert!(scope.allows(&account("shop-")));
        assert!(!scope.allows(&account("shop")));
        assert!(!scope.allows(&account("bob")));
        assert!(Scope::parse(&["*"]).unwrap().allows(&account("anyone")));
        assert_eq!(scope.patterns(), vec!["alice", "shop-*"]);
    }

    #[test]
    fn bad_scopes_are_refused() {
        for bad in [&["a*b"][..], &["**"], &[""], &["sp ace"], &["a", "é*"]] {
            assert!(
                matches!(Scope::parse(bad), Err(RuleError::BadScope { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(Scope::parse::<&str>(&[]), Err(RuleError::ScopeSize));
        let many = vec!["a"; MAX_SCOPE_PATTERNS + 1];
        assert_eq!(Scope::parse(&many), Err(RuleError::ScopeSize));
        assert!(Scope::parse(&vec!["a"; MAX_SCOPE_PATTERNS]).is_ok());
    }

    #[test]
    fn money_moves_out_of_or_into_the_scope_only() {
        let scope = Scope::parse(&["shop-*"]).unwrap();
        let amount = Amount::new(1).unwrap();
        let movement = |kind, from: &str, to: Option<&str>| {
            Movement::new(
                crate::domain::Kind::parse(kind).unwrap(),
                account(from),
                to.map(account),
                amount,
            )
            .unwrap()
        };
        assert_eq!(scope.refuses(&movement("debit", "shop-1", None)), None);
        assert_eq!(scope.refuses(&movement("credit", "shop-1", None)), None);
        let outside = account("bank");
        assert_eq!(
            scope.refuses(&movement("debit", "bank", None)),
            Some(&outside)
        );
        assert_eq!(
            scope.refuses(&movement("credit", "bank", None)),
            Some(&outside)
        );
        // A transfer out of the scope pays anyone; into it from outside is refused.
        assert_eq!(
            scope.refuses(&movement("transfer", "shop-1", Some("bank"))),
            None
        );
        assert_eq!(
            scope.refuses(&movement("transfer", "bank", Some("shop-1"))),
            Some(&outside)
        );
    }

    #[test]
    fn limits_default_the_burst_and_refuse_out_of_range() {
        assert_eq!(RateLimit::parse(None, None), Ok(None));
        let limit = RateLimit::parse(Some(100), None).unwrap().unwrap();
        assert_eq!((limit.rate_per_s, limit.burst), (100, 100));
        assert_eq!(limit.interval_us(), 10_000);
        let slow = RateLimit::parse(Some(3), Some(10)).unwrap().unwrap();
        assert_eq!(slow.interval_us(), 333_334);
        assert_eq!(
            RateLimit::parse(None, Some(5)),
            Err(RuleError::Missing("rate_per_s"))
        );
        for (rate, burst, field) in [
            (0, None, "rate_per_s"),
            (MAX_RATE + 1, None, "rate_per_s"),
            (5, Some(0), "burst"),
        ] {
            assert_eq!(
                RateLimit::parse(Some(rate), burst),
                Err(RuleError::LimitOutOfRange { field })
            );
        }
    }

    #[test]
    fn the_cache_forgets_a_key_after_its_ttl() {
        let cache = KeyCache::new(Duration::from_millis(50));
        let (id, secret) = generate();
        cache.insert(Arc::new(unlimited(&id, &secret)), Instant::now());
        assert!(cache.get(&id).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&id).is_none());
        cache.insert(Arc::new(unlimited(&id, &secret)), Instant::now());
        cache.remove(&id);
        assert!(cache.get(&id).is_none());
    }

    fn unlimited(id: &KeyId, secret: &str) -> ApiKey {
        ApiKey {
            id: id.clone(),
            secret_hash: hash_secret(secret),
            scope: Scope::parse(&["*"]).unwrap(),
            limit: None,
            created_at_ms: 0,
        }
    }
}
