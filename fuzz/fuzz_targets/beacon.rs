//! The beacon datagram decoder.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_wire::fuzz::beacon(data));
