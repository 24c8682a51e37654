//! The host's configuration, from a TOML file or a `--vdisk` spec on the
//! command line: any text gives a configuration or a clear error, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::config::{parse_size, HostConfig, VdiskConfig};

fuzz_target!(|text: &str| {
    let _ = HostConfig::from_toml(text, "fuzz.toml");
    let _ = VdiskConfig::from_spec(text);
    let _ = parse_size(text);
});
