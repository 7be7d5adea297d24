//! The deployer's message decoder, and its core taking what it decodes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_deployer::fuzz::deploy_message(data));
