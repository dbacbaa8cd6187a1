//! Fuzz target: see `hapair::sync::fuzz::path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hapair::sync::fuzz::path(data));
