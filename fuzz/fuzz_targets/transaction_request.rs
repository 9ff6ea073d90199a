//! The API's request decoder and validator (`POST /transactions` body plus
//! `Idempotency-Key`) on arbitrary bytes: it must never panic, and whatever
//! it accepts must be within the rules and survive the Kafka wire format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txengine::domain::MAX_MINOR_UNITS;
use txengine::http::decode_transaction;
use txengine::wire::Record;

fuzz_target!(|data: &[u8]| {
    // Everything after the first 0xFF (never in JSON text) is the header.
    let (body, key) = match data.iter().position(|b| *b == 0xFF) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(tx) = decode_transaction(body, key) else {
        return;
    };
    let id = tx.id.as_str();
    assert!((1..=64).contains(&id.len()), "id length: {id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)),
        "id charset: {id:?}"
    );
    let amount = tx.movement.amount().minor_units();
    assert!((1..=MAX_MINOR_UNITS).contains(&amount), "amount {amount}");
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
});
