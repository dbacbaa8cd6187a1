//! Fuzz target: see `hapair::sync::fuzz::order`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hapair::sync::fuzz::order(data));
