//! The connection's read path on arbitrary bytes: frames split off the buffer as `Conn` does,
//! publishes assembled from method, header and body frames. No input may panic, overflow the
//! stack or loop; a frame is never larger than the limit, and an assembled body is exactly
//! the size its header announced.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::protocol::codec::{self, Frame, Limits, Method};
use warren::protocol::content::Assembler;
use warren::protocol::encode;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        frame_max: if knobs & 1 == 0 { 4096 } else { 131_072 },
        table_depth: 1 + (knobs as usize >> 1) % 8 * 16,
    };
    let mut buf = BytesMut::from(input);
    let mut asm = Assembler::default();
    let mut announced = 0;
    loop {
        let before = buf.len();
        let frame = match codec::decode(&mut buf, limits) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return,
        };
        let used = before - buf.len();
        assert!(used >= 8 && used <= limits.frame_max as usize);
        let done = match frame {
            Frame::Method(_, Method::Publish(p)) => {
                asm.start(p);
                None
            }
            Frame::Method(ch, Method::Other(m)) => {
                // What the broker decoded it can encode again (replies echo tables back).
                let mut out = BytesMut::new();
                encode::method(&mut out, ch, &m);
                None
            }
            Frame::Header {
                class_id,
                body_size,
                properties,
                ..
            } => {
                announced = body_size;
                match asm.header(class_id, body_size, properties, 1 << 20) {
                    Ok(c) => c,
                    Err(_) => return,
                }
            }
            Frame::Body(_, data) => match asm.body(data) {
                Ok(c) => c,
                Err(_) => return,
            },
            Frame::Heartbeat(_) => None,
        };
        if let Some(content) = done {
            assert_eq!(content.body.len() as u64, announced);
            let _ = warren::protocol::properties::headers(&content.properties);
            let _ = warren::protocol::properties::expiration_ms(&content.properties);
        }
    }
});
