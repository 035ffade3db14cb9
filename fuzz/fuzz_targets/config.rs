//! Configuration parsing on arbitrary text (as the configuration file, over the built-in
//! defaults): it never panics; every refusal names its key (or, for text that is not TOML, the
//! line and column); and a configuration it accepts prints (`check-config`) as one it reads
//! back unchanged.

#![no_main]

use batchwatch_core::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Settings::load` reads the file as UTF-8 and refuses it otherwise, before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Settings::load_text(text, "fuzz.toml", []) {
        Ok(settings) => {
            let printed = settings.to_toml();
            let again = Settings::load_text(&printed, "printed", [])
                .unwrap_or_else(|e| panic!("{e}\nprinted:\n{printed}\nfrom:\n{text}"));
            assert_eq!(again, settings, "printed:\n{printed}\nfrom:\n{text}");
        }
        Err(e) => match &e.key {
            Some(key) => assert!(!key.is_empty(), "an empty key: {e:?} from {text:?}"),
            // toml gives every syntax error a place but one: nesting past its limit.
            None => assert!(
                e.problem.starts_with("not valid TOML")
                    && (e.problem.contains(" line ") || e.problem.contains("nested too deeply")),
                "a refusal that names neither a key nor a line: {e:?} from {text:?}"
            ),
        },
    }
});
