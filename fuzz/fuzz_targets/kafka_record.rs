//! The consumer's record decoder on arbitrary bytes: never a panic (a bad
//! record goes to the DLQ), and a record it accepts encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txengine::wire::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()).ok(), Some(record));
    }
});
