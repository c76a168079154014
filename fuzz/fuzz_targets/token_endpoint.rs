//! The OIDC token endpoint's answers through `parse_token_response`.
//!
//! Input: two bytes of status (mapped into 100..=599; 0x00C8 is 200), then the body.
//! The oracle: no panic; only a 200 is a grant; every refusal message is bounded (each quoted
//! field is cut at 200 characters).
#![no_main]

use credbroker::sources::refresh::parse_token_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_at_checked(2) else {
        return;
    };
    let status = 100 + u16::from_be_bytes([status[0], status[1]]) % 500;
    match parse_token_response(status, body) {
        Ok(_) => assert_eq!(status, 200, "only 200 is a grant"),
        Err(e) => {
            let chars = e.message.chars().count();
            assert!(chars <= 420, "a {chars}-character refusal message");
        }
    }
});
