//! Fuzz target: see `hapair::sync::fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hapair::sync::fuzz::manifest(data));
