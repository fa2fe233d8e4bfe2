//! SASL responses (PLAIN and AMQPLAIN) as a client that has not logged in may send them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::protocol::sasl;

fuzz_target!(|data: &[u8]| {
    let _ = sasl::plain(data);
    let _ = sasl::amqplain(data, 128);
});
