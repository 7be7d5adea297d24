//! The map message decoder, and both map cores taking what it decodes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_maps::fuzz::map_message(data));
