//! See meshaudit::fuzzing::claims_struct for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshaudit::fuzzing::claims_struct(data));
