//! Vdisk map nodes read back from flash or the pool: decoding never panics,
//! and a node it accepts encodes to bytes that decode to the same node.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::map::node::Node;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(node) = Node::decode(bytes) {
        let encoded = node
            .encode()
            .expect("a node that decoded has something to encode");
        let again = Node::decode(&encoded).expect("an encoded node decodes");
        assert!(again == node, "a node changed across encode and decode");
    }
});
