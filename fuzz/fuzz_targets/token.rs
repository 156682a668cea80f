//! See meshaudit::fuzzing::token for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshaudit::fuzzing::token(data));
