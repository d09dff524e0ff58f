//! libFuzzer driver for [`fleetmap_fuzz::manifest`]: `cargo +nightly fuzz run manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fleetmap_fuzz::manifest(data);
});
