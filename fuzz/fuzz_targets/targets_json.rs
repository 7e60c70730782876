//! A JSON site list from anywhere: refused with a reason or accepted whole,
//! never a panic; what is accepted keeps the promises a list makes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(targets) = sitewatch_monitor::targets::parse_json("fuzz.json", text) {
        sitewatch_fuzz::assert_sound(&targets);
    }
});
