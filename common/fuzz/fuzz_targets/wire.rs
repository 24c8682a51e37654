//! Host-to-pool messages from an untrusted peer: the length prefix check,
//! `Request::decode` (the pool's side) and `Response::decode` (the host's
//! side) never panic, and whatever they accept encodes to a frame whose
//! prefix is its body's length and whose body decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_common::wire::{body_len, Request, Response};

/// The body of `frame`, after checking its length prefix.
fn body_of(frame: &[u8]) -> &[u8] {
    let (prefix, body) = frame.split_at(4);
    let len = body_len([prefix[0], prefix[1], prefix[2], prefix[3]]);
    assert_eq!(
        len,
        Ok(body.len()),
        "an encoded frame's prefix is not its body's length"
    );
    body
}

fuzz_target!(|bytes: &[u8]| {
    if let Some(prefix) = bytes.first_chunk::<4>() {
        let _ = body_len(*prefix);
    }
    if let Ok(request) = Request::decode(bytes) {
        let again = Request::decode(body_of(&request.encode()));
        assert_eq!(
            again.as_ref(),
            Ok(&request),
            "a request changed across encode and decode"
        );
    }
    if let Ok(response) = Response::decode(bytes) {
        let again = Response::decode(body_of(&response.encode()));
        assert_eq!(
            again.as_ref(),
            Ok(&response),
            "a response changed across encode and decode"
        );
    }
});
