//! The API's request decoders on arbitrary bytes: the `POST /transactions`
//! body plus `Idempotency-Key`, the `POST /transactions/batch` body, the
//! `POST /admin/keys` body, the `PUT /accounts/{account}` body, and an API
//! key as `Authorization` carries it.
//! None may panic; whatever they accept must be within the rules (and a
//! transaction must survive the Kafka wire format).
#![no_main]

use libfuzzer_sys::fuzz_target;
use txengine::limits::MAX_MINOR_UNITS;
use txengine::domain::{AccountId, Amount, HoldTerms, Movement, Transaction};
use txengine::admission::{HoldTimeouts, Posted};
use txengine::domain::{Asset, Balance};
use txengine::http::{decode_account_request, decode_batch, decode_key_request, decode_transaction};
use txengine::limits::{MAX_BATCH_ITEMS, MAX_POSTINGS};
use txengine::keys::{key_id_of, Scope};
use txengine::limits::MAX_RATE;
use txengine::wire::Record;

fuzz_target!(|data: &[u8]| {
    // Everything after the first 0xFF (never in JSON text) is the header.
    let (body, header) = match data.iter().position(|b| *b == 0xFF) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    check_key_request(body);
    check_account_request(body);
    if let Some(id) = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(key_id_of)
    {
        let id = id.as_str();
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "key id {id:?}");
    }
    check_batch(body);
    if let Ok(posted) = decode_transaction(body, header) {
        check_posted(posted);
    }
});

/// A request the API reads becomes a transaction within the rules once
/// admission completes it: under the hold timeouts, and for a capture or
/// void with its hold's terms (none known: refused, never a transaction).
fn check_posted(posted: Posted) {
    let timeouts = HoldTimeouts {
        default_s: 600,
        max_s: 86_400,
    };
    if posted.ended_hold().is_some() {
        assert!(posted.clone().complete(timeouts, None).is_err(), "an unknown hold");
    }
    let terms = HoldTerms {
        account: AccountId::parse("held-acct").unwrap(),
        to: Some(AccountId::parse("held-to").unwrap()),
        amount: Amount::new(7).unwrap(),
    };
    if let Ok(tx) = posted.complete(timeouts, Some(terms)) {
        if let Movement::Hold { timeout_s, .. } = tx.movement {
            assert!((1..=timeouts.max_s).contains(&timeout_s), "timeout {timeout_s}");
        }
        check_transaction(tx);
    }
}

/// A batch the API reads has 1 ..= MAX_BATCH_ITEMS items; each item it
/// takes is a transaction within the rules, whose id is the one reported.
fn check_batch(body: &[u8]) {
    let Ok(items) = decode_batch(body) else {
        return;
    };
    assert!((1..=MAX_BATCH_ITEMS).contains(&items.len()), "{} items", items.len());
    for item in items {
        if let Ok(posted) = item.transaction {
            assert_eq!(item.id.as_deref(), Some(posted.id().as_str()));
            check_posted(posted);
        }
    }
}

/// A transaction the API takes is within the rules and survives the wire.
fn check_transaction(tx: Transaction) {
    let id = tx.id.as_str();
    assert!((1..=64).contains(&id.len()), "id length: {id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)),
        "id charset: {id:?}"
    );
    match tx.movement.postings() {
        // Postings: 1 ..= MAX_POSTINGS, each an amount in range between two
        // accounts, and no asset named for the whole.
        Some(postings) => {
            assert!((1..=MAX_POSTINGS).contains(&postings.len()), "{} postings", postings.len());
            for posting in postings.iter() {
                let amount = posting.amount.minor_units();
                assert!((1..=MAX_MINOR_UNITS).contains(&amount), "amount {amount}");
                assert_ne!(posting.from, posting.to, "a posting to itself");
            }
            assert_eq!(tx.asset, None, "postings name assets per posting");
        }
        None => {
            let amount = tx.movement.amount().map(Amount::minor_units).unwrap_or(0);
            assert!((1..=MAX_MINOR_UNITS).contains(&amount), "amount {amount}");
        }
    }
    assert_ne!(
        tx.movement.to(),
        Some(tx.movement.account()),
        "transfer to self"
    );
    let record = Record {
        tx,
        accepted_at_ms: 1,
        saga: None,
    };
    assert_eq!(Record::decode(&record.encode()).ok(), Some(record));
}

/// A key request the API accepts has a scope that reads back as itself and
/// a limit within range.
fn check_key_request(body: &[u8]) {
    let Ok((scope, limit)) = decode_key_request(body) else {
        return;
    };
    let patterns = scope.patterns();
    assert_eq!(Scope::parse(&patterns).as_ref(), Ok(&scope), "{patterns:?}");
    if let Some(limit) = limit {
        assert!((1..=MAX_RATE).contains(&limit.rate_per_s));
        assert!((1..=MAX_RATE).contains(&limit.burst));
        assert!(limit.interval_us() >= 1);
    }
}

/// An account change the API reads names an asset of the pattern (that
/// reads back as itself) and bounds within +-(2^53-1).
fn check_account_request(body: &[u8]) {
    let Ok(change) = decode_account_request(body) else {
        return;
    };
    if let Some(asset) = &change.asset {
        assert_eq!(Asset::parse(asset.as_str()).as_ref(), Ok(asset));
    }
    for bound in [change.min_balance, change.max_balance].into_iter().flatten() {
        assert!(Balance::new(bound.minor_units()).is_ok(), "{bound:?}");
        assert!(bound.minor_units().unsigned_abs() <= MAX_MINOR_UNITS);
    }
}
