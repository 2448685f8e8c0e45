//! Fuzz target: the settings loader, `switchboard::config::Settings::load_from_toml`
//! (src/config.rs): the same layers and checks as the file the binary reads with
//! `--config` (defaults, the TOML, then `SWITCHBOARD__SECTION__KEY` variables), from text;
//! then `--check-config`'s printing (`Settings::to_toml`) and the warnings about unread
//! variables.
//!
//! Input: the TOML text, then optionally a NUL byte and the environment, one `NAME=VALUE`
//! a line (a NUL cannot be in TOML, so the split is unambiguous).
//!
//! Invariants, past "no panic":
//! - settings that loaded pass their own checks (`Settings::validate`);
//! - what `--check-config --show-secrets` prints loads back, and prints the same again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::{unread_variables, Namespaces, Settings};

fuzz_target!(|data: &[u8]| {
    let (toml, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // `config` reads a file as UTF-8, replacing what is not.
    let toml = String::from_utf8_lossy(toml);
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let _ = unread_variables(env.iter().map(|(name, _)| name));
    let Ok(settings) = Settings::load_from_toml(&toml, env) else {
        return;
    };
    if let Err(e) = settings.validate() {
        panic!("loaded settings fail their checks: {e}");
    }
    let _ = Namespaces::new(&settings);
    let _ = settings.to_toml(false);
    let printed = match settings.to_toml(true) {
        Ok(printed) => printed,
        Err(e) => panic!("loaded settings cannot be printed: {e}"),
    };
    let again = match Settings::load_from_toml(&printed, Vec::new()) {
        Ok(again) => again,
        Err(e) => panic!("the printed settings do not load: {e}\n{printed}"),
    };
    match again.to_toml(true) {
        Ok(twice) => assert_eq!(twice, printed, "printed twice, the settings differ"),
        Err(e) => panic!("reloaded settings cannot be printed: {e}"),
    }
});
