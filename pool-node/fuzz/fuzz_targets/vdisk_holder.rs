//! Vdisk holder records read from the catalog: any bytes decode to a
//! holder with a host name or an error, never a panic; an accepted record
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_pool::catalog::VdiskHolder;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(holder) = VdiskHolder::decode("fuzz", bytes) {
        assert!(!holder.host.is_empty());
        assert!(
            holder.encode() == bytes,
            "an accepted record is not canonical"
        );
    }
});
