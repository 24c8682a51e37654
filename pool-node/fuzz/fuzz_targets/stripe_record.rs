//! Stripe records read from the catalog: any bytes decode to a record of
//! k + 2 chunks or an error, never a panic; an accepted record in the
//! current layout re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_pool::catalog::StripeRecord;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = StripeRecord::decode(bytes) {
        assert_eq!(record.drives.len(), record.k + 2);
        assert_eq!(record.places.len(), record.k + 2);
        let again = record.encode();
        if again.len() == bytes.len() {
            assert!(again == bytes, "an accepted record is not canonical");
        }
    }
});
