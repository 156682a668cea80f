//! See meshaudit::fuzzing::als_message for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshaudit::fuzzing::als_message(data));
