//! A transaction's metadata: a flat object of strings the client attaches,
//! bound by the transaction's fingerprint and kept in its history entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::RuleError;
use crate::limits::{MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS};

/// A transaction's metadata: a flat object of strings, within the named
/// limits. Kept in key order, so one object has one canonical text (its
/// JSON), which the fingerprint binds; empty is the same as none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Metadata(BTreeMap<String, String>);

impl TryFrom<BTreeMap<String, String>> for Metadata {
    type Error = RuleError;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, RuleError> {
        if map.len() > MAX_METADATA_KEYS {
            return Err(RuleError::MetadataKeys);
        }
        let short = |text: &str, most| text.chars().count() <= most;
        for (key, value) in &map {
            if key.is_empty() || !short(key, MAX_METADATA_KEY_CHARS) {
                return Err(RuleError::MetadataKey { key: key.clone() });
            }
            if !short(value, MAX_METADATA_VALUE_CHARS) {
                return Err(RuleError::MetadataValue { key: key.clone() });
            }
        }
        Ok(Self(map))
    }
}

impl Metadata {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The canonical text: compact JSON in key order; `""` when empty.
    pub fn to_json(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        serde_json::to_string(&self.0).expect("a map of strings always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, Amount, Binding, Movement, Transaction, TxId};

    #[test]
    fn metadata_is_bound_in_key_order_within_its_limits() {
        let meta = |json: &str| serde_json::from_str::<Metadata>(json);
        let ab = meta(r#"{"b":"2","a":"1|x\ny"}"#).unwrap();
        assert_eq!(ab.to_json(), r#"{"a":"1|x\ny","b":"2"}"#);
        assert_eq!(Metadata::default().to_json(), "");
        let tx = Transaction {
            asset: None,
            id: TxId::parse("t").unwrap(),
            movement: Movement::Hold {
                account: AccountId::parse("a").unwrap(),
                to: Some(AccountId::parse("b").unwrap()),
                amount: Amount::new(5).unwrap(),
                timeout_s: 30,
            },
            metadata: ab.clone(),
        };
        let fingerprint = tx.fingerprint();
        assert_eq!(
            fingerprint,
            "hold|a|b|5|30\n{\"a\":\"1|x\\ny\",\"b\":\"2\"}"
        );
        assert_eq!(Binding::decode(&fingerprint).unwrap().metadata, ab);
        assert_eq!(
            Binding::decode("hold|a|b|5|30").unwrap().metadata,
            Metadata::default()
        );
        let none = Transaction {
            metadata: Metadata::default(),
            ..tx
        };
        assert_eq!(none.fingerprint(), "hold|a|b|5|30");

        let keys = |n: usize| {
            let pairs: Vec<String> = (0..n).map(|i| format!(r#""k{i}":"v""#)).collect();
            format!("{{{}}}", pairs.join(","))
        };
        assert!(meta(&keys(MAX_METADATA_KEYS)).is_ok());
        assert!(meta(&keys(MAX_METADATA_KEYS + 1)).is_err());
        let long = |n: usize| "é".repeat(n);
        assert!(meta(&format!(r#"{{"{}":"v"}}"#, long(MAX_METADATA_KEY_CHARS))).is_ok());
        assert!(meta(&format!(
            r#"{{"{}":"v"}}"#,
            long(MAX_METADATA_KEY_CHARS + 1)
        ))
        .is_err());
        assert!(meta(r#"{"":"v"}"#).is_err());
        assert!(meta(&format!(r#"{{"k":"{}"}}"#, long(MAX_METADATA_VALUE_CHARS))).is_ok());
        assert!(meta(&format!(
            r#"{{"k":"{}"}}"#,
            long(MAX_METADATA_VALUE_CHARS + 1)
        ))
        .is_err());
        assert!(meta(r#"{"k":{"nested":"v"}}"#).is_err());
    }
}
