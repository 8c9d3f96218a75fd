//! The scenario parser (src/scenario.rs) on arbitrary text, with an override built from
//! the same input: it answers with a validated scenario or an error naming the field; it
//! never panics. A scenario it accepts survives its own round trip through TOML.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wdml::scenario::Scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The last line, if it looks like `section.field=value`, is also tried as a --set.
    let overrides: Vec<String> = text
        .lines()
        .last()
        .filter(|l| l.contains('=') && l.contains('.') && !l.contains('['))
        .map(|l| vec![l.to_string()])
        .unwrap_or_default();
    for overrides in [&[][..], &overrides[..]] {
        if let Ok(scenario) = Scenario::parse(text, "fuzz", overrides) {
            let again = scenario.to_toml().expect("a valid scenario serialises");
            let back = Scenario::parse(&again, "round trip", &[]).expect("a valid scenario parses back");
            assert_eq!(back, scenario);
        }
    }
});
