//! The scenario file parser and validator on arbitrary text: an error, never
//! a panic, and the same answer twice.
#![no_main]

use harness::scenario::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Scenario::parse(text).map_err(|e| e.to_string());
    let second = Scenario::parse(text).map_err(|e| e.to_string());
    assert_eq!(first.is_ok(), second.is_ok());
    assert_eq!(first.err(), second.err());
});
