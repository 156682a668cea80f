//! See meshaudit::fuzzing::peer_cert for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshaudit::fuzzing::peer_cert(data));
