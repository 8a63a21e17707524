#![no_main]
//! See `pbft_ci_fuzz::wire` for what this target checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: pbft_ci_fuzz::init(), |data: &[u8]| pbft_ci_fuzz::wire::check(data));
