//! libFuzzer driver for the wire decoder: `cargo +nightly fuzz run decode`. The same bytes
//! are decoded as they are, and read as a recipe for structurally random messages that
//! must survive an encode/decode round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fleetmap_fuzz::decode(data);
    let _ = fleetmap_fuzz::round_trip(data);
});
