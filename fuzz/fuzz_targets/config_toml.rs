//! The config file as an operator writes it: parsing and validation never panic, and every
//! refusal names a key (or a file position) and says what is wrong, as `edgeplane serve` prints
//! it in its one error line.
#![no_main]

use edgeplane_dataplane::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, "fuzz.toml") {
        assert!(!e.key.trim().is_empty(), "no key: {e:?}");
        assert!(!e.problem.trim().is_empty(), "no problem: {e:?}");
        assert!(!e.to_string().contains('\n'), "more than one line: {e}");
    }
});
