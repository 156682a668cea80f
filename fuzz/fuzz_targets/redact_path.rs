//! See meshaudit::fuzzing::redact_path for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshaudit::fuzzing::redact_path(data));
