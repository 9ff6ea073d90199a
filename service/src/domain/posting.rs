//! Postings: several movements of one transaction, applied in order, all
//! or none.

use serde::{Deserialize, Serialize};

use super::{AccountId, Amount, Asset, RuleError};
use crate::limits::MAX_POSTINGS;

/// One movement of a postings transaction: `amount` from `from` to `to`,
/// both holding `asset` when it is named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<Asset>,
}

impl Posting {
    /// A posting, refused when it moves money to its own account.
    pub fn new(
        from: AccountId,
        to: AccountId,
        amount: Amount,
        asset: Option<Asset>,
    ) -> Result<Self, RuleError> {
        if from == to {
            return Err(RuleError::PostingToSelf);
        }
        Ok(Self {
            from,
            to,
            amount,
            asset,
        })
    }
}

/// The postings of one transaction: 1 ..= [`MAX_POSTINGS`], none to its
/// own account. Only a valid list can be built or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Postings(Vec<Posting>);

impl Postings {
    pub fn new(postings: Vec<Posting>) -> Result<Self, RuleError> {
        if !(1..=MAX_POSTINGS).contains(&postings.len()) {
            return Err(RuleError::PostingsCount);
        }
        if postings.iter().any(|posting| posting.from == posting.to) {
            return Err(RuleError::PostingToSelf);
        }
        Ok(Self(postings))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Posting> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a list holds at least one posting.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first posting's `from`: the account a postings transaction is
    /// keyed and routed by.
    pub fn first_from(&self) -> &AccountId {
        &self.0[0].from
    }

    /// The same postings, each naming `assets[i]` where it named none (the
    /// asset its money was of: its `from`'s); `None` leaves it as it is.
    pub fn with_assets(&self, assets: &[Option<Asset>]) -> Self {
        let mut named = self.clone();
        for (posting, asset) in named.0.iter_mut().zip(assets) {
            if posting.asset.is_none() {
                posting.asset = asset.clone();
            }
        }
        named
    }

    /// Every account named, each once, in the order of first mention
    /// (the first posting's `from` first).
    pub fn accounts(&self) -> Vec<&AccountId> {
        let mut accounts: Vec<&AccountId> = Vec::with_capacity(self.0.len() + 1);
        for posting in &self.0 {
            for account in [&posting.from, &posting.to] {
                if !accounts.contains(&account) {
                    accounts.push(account);
                }
            }
        }
        accounts
    }
}

impl<'de> Deserialize<'de> for Postings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(Vec::<Posting>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(from: &str, to: &str) -> Posting {
        Posting {
            from: AccountId::parse(from).unwrap(),
            to: AccountId::parse(to).unwrap(),
            amount: Amount::new(1).unwrap(),
            asset: None,
        }
    }

    #[test]
    fn a_list_holds_one_to_the_limit_and_none_to_itself() {
        assert_eq!(Postings::new(vec![]), Err(RuleError::PostingsCount));
        assert!(Postings::new(vec![posting("a", "b")]).is_ok());
        let most = vec![posting("a", "b"); MAX_POSTINGS];
        assert!(Postings::new(most.clone()).is_ok());
        let too_many = [most, vec![posting("a", "b")]].concat();
        assert_eq!(Postings::new(too_many), Err(RuleError::PostingsCount));
        assert_eq!(
            Postings::new(vec![posting("a", "b"), posting("c", "c")]),
            Err(RuleError::PostingToSelf)
        );
        let decoded: Result<Postings, _> =
            serde_json::from_str(r#"[{"from":"a","to":"a","amount":1}]"#);
        assert!(decoded.is_err(), "decoding checks the rules too");
    }

    #[test]
    fn accounts_are_named_once_in_order_of_first_mention() {
        let list = Postings::new(vec![
            posting("a", "b"),
            posting("b", "c"),
            posting("c", "a"),
        ])
        .unwrap();
        let names: Vec<&str> = list.accounts().into_iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(list.first_from().as_str(), "a");
    }
}
