//! API key records and their index, in one slot.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::{Store, StoreError};
use crate::keys::{ApiKey, KeyId, RateLimit, Scope};

impl Store {
    /// Stores a new API key and lists it. False (nothing written) when a
    /// key with its id exists: make another id.
    pub async fn create_key(&self, key: &ApiKey) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let record = self.layout.api_key(key.id.as_str());
        let exists: bool = conn.exists(&record).await?;
        if exists {
            return Ok(false);
        }
        let mut fields: Vec<(&str, String)> = vec![
            ("hash", key.secret_hash.clone()),
            (
                "accounts",
                serde_json::to_string(&key.scope.patterns()).expect("strings"),
            ),
            ("created_at_ms", key.created_at_ms.to_string()),
        ];
        if let Some(limit) = key.limit {
            fields.push(("rate_per_s", limit.rate_per_s.to_string()));
            fields.push(("burst", limit.burst.to_string()));
        }
        // Listed first, then written: a crash in between leaves an id in the
        // index with no record (lists skip it), never a key that works but
        // is not listed.
        let _: () = redis::pipe()
            .sadd(self.layout.api_key_index(), key.id.as_str())
            .ignore()
            .hset_multiple(&record, &fields)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }

    /// The key `id`, if it exists.
    pub async fn api_key(&self, id: &KeyId) -> Result<Option<ApiKey>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> =
            conn.hgetall(self.layout.api_key(id.as_str())).await?;
        parse_key(id, &fields)
    }

    /// Every key, by id.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = conn.smembers(self.layout.api_key_index()).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.layout.api_key(id));
        }
        let records: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut keys = Vec::new();
        for (id, fields) in ids.iter().zip(records) {
            let id = KeyId::parse(id).map_err(|e| StoreError::Unexpected(e.to_string()))?;
            keys.extend(parse_key(&id, &fields)?);
        }
        Ok(keys)
    }

    /// Deletes the key `id` (its record first, so it stops working at once
    /// for every reader of Redis) and its rate limit state. False when
    /// there was no such key.
    pub async fn delete_key(&self, id: &KeyId) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let (deleted, _): (u32, u32) = redis::pipe()
            .del(self.layout.api_key(id.as_str()))
            .srem(self.layout.api_key_index(), id.as_str())
            .query_async(&mut conn)
            .await?;
        let _: () = conn.del(self.layout.rate(id.as_str())).await?;
        Ok(deleted == 1)
    }
}

/// A key record's fields (an empty map: no such key).
fn parse_key(id: &KeyId, fields: &HashMap<String, String>) -> Result<Option<ApiKey>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let broken = |what: &str| StoreError::Unexpected(format!("api key {id}: {what}"));
    let number = |field: &str| -> Result<Option<u64>, StoreError> {
        fields
            .get(field)
            .map(|raw| raw.parse().map_err(|_| broken(field)))
            .transpose()
    };
    let patterns: Vec<String> = fields
        .get("accounts")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .ok_or_else(|| broken("accounts"))?;
    Ok(Some(ApiKey {
        id: id.clone(),
        secret_hash: fields.get("hash").cloned().ok_or_else(|| broken("hash"))?,
        scope: Scope::parse(&patterns).map_err(|e| broken(&e.to_string()))?,
        limit: RateLimit::parse(number("rate_per_s")?, number("burst")?)
            .map_err(|e| broken(&e.to_string()))?,
        created_at_ms: number("created_at_ms")?.ok_or_else(|| broken("created_at_ms"))?,
    }))
}
