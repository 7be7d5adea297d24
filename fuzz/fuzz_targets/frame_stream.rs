//! The stream frame decoder, fed in chunks (first byte = chunk size).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_wire::fuzz::frame_stream(data));
