//! What a transaction id is bound to: all of its body but the id (the
//! movement and its metadata), kept as one canonical text in the id's
//! record. Two requests under one id are the same request exactly when
//! their texts are equal. One encode ([`Binding::encode`]) and one decode
//! ([`Binding::decode`]): whatever needs a bound body back (a hold's terms
//! for its capture, the accounts a key must see, the metadata) decodes it.
//!
//! The text: `kind|account|to|amount`, then `|timeout_s` for a hold or
//! `|hold` for a capture, void or expiry (`to` empty when there is none),
//! then ` asset` (a space and the asset) when it names one; then, when
//! there is metadata, a newline and its canonical JSON (which escapes
//! every newline, so the first one always ends the movement). A body of
//! an earlier version (no asset) keeps its text. A postings transaction's
//! movement is `postings` then `|from,to,amount,asset` for each posting
//! (`asset` empty when it names none; no id or asset has a comma).

use super::{
    AccountId, Amount, Asset, HoldTerms, Kind, Metadata, Movement, Posting, Postings, TxId,
};

/// A transaction's body as its id is bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub movement: Movement,
    pub metadata: Metadata,
    pub asset: Option<Asset>,
}

impl Binding {
    /// The canonical text of a body.
    pub fn encode(movement: &Movement, metadata: &Metadata, asset: Option<&Asset>) -> String {
        let mut movement = match movement {
            Movement::Postings { postings } => Self::encode_postings(postings),
            other => Self::encode_one(other),
        };
        if let Some(asset) = asset {
            movement = format!("{movement} {asset}");
        }
        match metadata.is_empty() {
            true => movement,
            false => format!("{movement}\n{}", metadata.to_json()),
        }
    }

    /// `postings|from,to,amount,asset|...`
    fn encode_postings(postings: &Postings) -> String {
        let mut text = Kind::Postings.as_str().to_owned();
        for posting in postings.iter() {
            let asset = posting.asset.as_ref().map_or("", Asset::as_str);
            let (from, to, amount) = (&posting.from, &posting.to, posting.amount.minor_units());
            text.push_str(&format!("|{from},{to},{amount},{asset}"));
        }
        text
    }

    /// The postings of `postings|...` (its parts after the kind).
    fn decode_postings<'a>(parts: impl Iterator<Item = &'a str>) -> Option<Movement> {
        let postings = parts
            .map(|part| {
                let mut fields = part.split(',');
                let from = AccountId::parse(fields.next()?).ok()?;
                let to = AccountId::parse(fields.next()?).ok()?;
                let amount = Amount::new(fields.next()?.parse().ok()?).ok()?;
                let asset = match fields.next()? {
                    "" => None,
                    asset => Some(Asset::parse(asset).ok()?),
                };
                if fields.next().is_some() {
                    return None;
                }
                Posting::new(from, to, amount, asset).ok()
            })
            .collect::<Option<Vec<Posting>>>()?;
        Some(Movement::Postings {
            postings: Postings::new(postings).ok()?,
        })
    }

    /// `kind|account|to|amount` and a hold's timeout or the hold ended.
    fn encode_one(movement: &Movement) -> String {
        let amount = movement.amount().map_or(0, Amount::minor_units);
        let base = format!(
            "{}|{}|{}|{}",
            movement.kind(),
            movement.account(),
            movement.to().map(AccountId::as_str).unwrap_or(""),
            amount
        );
        match movement {
            Movement::Hold { timeout_s, .. } => format!("{base}|{timeout_s}"),
            _ => match movement.ended_hold() {
                Some(hold) => format!("{base}|{hold}"),
                None => base,
            },
        }
    }

    /// The body a text binds; `None` for a text [`Binding::encode`] does not
    /// write.
    pub fn decode(text: &str) -> Option<Self> {
        let (movement, metadata) = match text.split_once('\n') {
            Some((movement, json)) => (movement, serde_json::from_str(json).ok()?),
            None => (text, Metadata::default()),
        };
        let (movement, asset) = match movement.split_once(' ') {
            Some((movement, asset)) => (movement, Some(Asset::parse(asset).ok()?)),
            None => (movement, None),
        };
        let mut parts = movement.split('|');
        let kind = Kind::parse(parts.next()?)?;
        if kind == Kind::Postings {
            return Some(Self {
                movement: Self::decode_postings(parts)?,
                metadata,
                asset,
            });
        }
        let account = AccountId::parse(parts.next()?).ok()?;
        let to = match parts.next()? {
            "" => None,
            to => Some(AccountId::parse(to).ok()?),
        };
        let amount = Amount::new(parts.next()?.parse().ok()?).ok()?;
        // A hold's timeout, or the hold a capture, void or expiry ends.
        let last = parts.next();
        if parts.next().is_some() {
            return None;
        }
        let hold = || TxId::parse(last?).ok();
        let movement = match (kind, to) {
            (Kind::Debit | Kind::Credit | Kind::Transfer, to) if last.is_none() => {
                Movement::new(kind, account, to, amount).ok()?
            }
            (Kind::Debit | Kind::Credit | Kind::Transfer, _) => return None,
            (Kind::Hold, to) => Movement::Hold {
                account,
                to,
                amount,
                timeout_s: last?.parse().ok()?,
            },
            (Kind::Capture, to) => Movement::Capture {
                hold: hold()?,
                account,
                to,
                amount,
            },
            (Kind::Void, None) => Movement::Void {
                hold: hold()?,
                account,
                amount,
            },
            (Kind::Expire, None) => Movement::Expire {
                hold: hold()?,
                account,
                amount,
            },
            (Kind::Void | Kind::Expire, Some(_)) | (Kind::Postings, _) => return None,
        };
        Some(Self {
            movement,
            metadata,
            asset,
        })
    }

    /// The terms of the hold this binds, if it binds one.
    pub fn hold_terms(&self) -> Option<HoldTerms> {
        match &self.movement {
            Movement::Hold {
                account,
                to,
                amount,
                ..
            } => Some(HoldTerms {
                account: account.clone(),
                to: to.clone(),
                amount: *amount,
            }),
            _ => None,
        }
    }

    /// The terms of the hold `text` binds (`None`: it binds none).
    pub fn hold_terms_of(text: &str) -> Option<HoldTerms> {
        Self::decode(text)?.hold_terms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str) -> AccountId {
        AccountId::parse(id).unwrap()
    }

    fn every_kind() -> Vec<Movement> {
        let (a, b) = (account("a"), account("b"));
        let five = Amount::new(5).unwrap();
        let h = TxId::parse("h").unwrap();
        vec![
            Movement::Debit {
                account: a.clone(),
                amount: five,
            },
            Movement::Credit {
                account: a.clone(),
                amount: five,
            },
            Movement::Transfer {
                account: a.clone(),
                to: b.clone(),
                amount: five,
            },
            Movement::Hold {
                account: a.clone(),
                to: Some(b.clone()),
                amount: five,
                timeout_s: 30,
            },
            Movement::Hold {
                account: a.clone(),
                to: None,
                amount: five,
                timeout_s: 30,
            },
            Movement::Capture {
                hold: h.clone(),
                account: a.clone(),
                to: Some(b),
                amount: five,
            },
            Movement::Capture {
                hold: h.clone(),
                account: a.clone(),
                to: None,
                amount: five,
            },
            Movement::Void {
                hold: h.clone(),
                account: a.clone(),
                amount: five,
            },
            Movement::Expire {
                hold: h,
                account: a.clone(),
                amount: five,
            },
            Movement::Postings {
                postings: Postings::new(vec![
                    Posting::new(a, account("b"), five, Asset::parse("USD/2").ok()).unwrap(),
                    Posting::new(account("b"), account("c"), Amount::new(7).unwrap(), None)
                        .unwrap(),
                ])
                .unwrap(),
            },
        ]
    }

    /// Every kind of body, with and without metadata and an asset, decodes
    /// back from its text to itself.
    #[test]
    fn every_body_decodes_from_its_text() {
        let tagged: Metadata = serde_json::from_str(r#"{"b":"2","a":"1|x\ny"}"#).unwrap();
        let usd = Asset::parse("USD/2").unwrap();
        for movement in every_kind() {
            for metadata in [Metadata::default(), tagged.clone()] {
                for asset in [None, Some(&usd)] {
                    let text = Binding::encode(&movement, &metadata, asset);
                    let bound = Binding {
                        movement: movement.clone(),
                        metadata: metadata.clone(),
                        asset: asset.cloned(),
                    };
                    assert_eq!(Binding::decode(&text), Some(bound), "{text}");
                }
            }
        }
    }

    #[test]
    fn the_text_is_canonical() {
        let tagged: Metadata = serde_json::from_str(r#"{"b":"2","a":"1|x\ny"}"#).unwrap();
        let texts: Vec<String> = every_kind()
            .iter()
            .map(|movement| Binding::encode(movement, &Metadata::default(), None))
            .collect();
        assert_eq!(
            texts,
            [
                "debit|a||5",
                "credit|a||5",
                "transfer|a|b|5",
                "hold|a|b|5|30",
                "hold|a||5|30",
                "capture|a|b|5|h",
                "capture|a||5|h",
                "void|a||5|h",
                "expire|a||5|h",
                "postings|a,b,5,USD/2|b,c,7,",
            ]
        );
        assert_eq!(
            Binding::encode(&every_kind()[3], &tagged, None),
            "hold|a|b|5|30\n{\"a\":\"1|x\\ny\",\"b\":\"2\"}"
        );
        let usd = Asset::parse("USD/2").unwrap();
        assert_eq!(
            Binding::encode(&every_kind()[3], &tagged, Some(&usd)),
            "hold|a|b|5|30 USD/2\n{\"a\":\"1|x\\ny\",\"b\":\"2\"}"
        );
    }

    /// Only a hold's text names hold terms; texts encode never writes are
    /// refused, never read as something else.
    #[test]
    fn a_hold_s_text_names_its_terms_and_nothing_else_does() {
        assert_eq!(
            Binding::hold_terms_of("hold|a|b|5|30\n{\"k\":\"v\"}"),
            Some(HoldTerms {
                account: account("a"),
                to: Some(account("b")),
                amount: Amount::new(5).unwrap(),
            })
        );
        assert_eq!(
            Binding::hold_terms_of("hold|a||5|30").map(|t| t.to),
            Some(None)
        );
        for other in ["capture|a|b|5|h", "debit|a||5", "transfer|a|b|5"] {
            assert!(Binding::decode(other).is_some(), "{other}");
            assert_eq!(Binding::hold_terms_of(other), None, "{other}");
        }
        for broken in [
            "",
            "hold|a||x|1",
            "hold|a b||5|1",
            "hold|a||5",
            "hold|a||5|1|2",
            "debit|a|b|5",
            "transfer|a|a|5",
            "transfer|a||5",
            "void|a|b|5|h",
            "refund|a||5",
            "debit|a||5\nnot json",
            "debit|a||0",
            "debit|a||5 usd",
            "debit|a||5 ",
            "debit|a||5 USD/2 EUR/2",
            "postings",
            "postings|a,a,5,",
            "postings|a,b,5",
            "postings|a,b,5,,x",
            "postings|a,b,0,",
            "postings|a,b,5,usd",
            "postings|a||5",
        ] {
            assert_eq!(Binding::decode(broken), None, "{broken}");
        }
    }
}
