//! Vdisk map nodes read back from flash or the pool: decoding never panics,
//! and a node it accepts encodes to bytes that decode to the same node.
//! With an odd first byte the node's checksum (its last 8 bytes, over the
//! rest) is recomputed first, so the fuzzer reaches the checks of the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::map::node::Node;
use xxhash_rust::xxh3::xxh3_64;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode % 2 == 1 && bytes.len() >= 8 {
        let at = bytes.len() - 8;
        let sum = xxh3_64(&bytes[..at]);
        bytes[at..].copy_from_slice(&sum.to_le_bytes());
    }
    if let Ok(node) = Node::decode(&bytes) {
        let encoded = node
            .encode()
            .expect("a node that decoded has something to encode");
        let again = Node::decode(&encoded).expect("an encoded node decodes");
        assert!(again == node, "a node changed across encode and decode");
    }
});
