//! Content-header properties: the depth check, the hand-written fast walk and the full parser
//! on arbitrary bytes. No panic; the broker's reading agrees with amq-protocol's.
#![no_main]

use amq_protocol::protocol::basic::parse_properties;
use libfuzzer_sys::fuzz_target;
use warren::protocol::properties;
use warren::protocol::table::DEPTH_CAP;

fuzz_target!(|raw: &[u8]| {
    let mode = properties::checked_delivery_mode(raw);
    let _ = properties::expiration_ms(raw);
    let _ = properties::headers(raw);
    if properties::check_depth(raw, DEPTH_CAP).is_ok() {
        let full = match parse_properties(raw) {
            Ok((&[], p)) => Some(*p.delivery_mode()),
            _ => None,
        };
        assert_eq!(mode, full, "fast walk and parser disagree");
    }
});
