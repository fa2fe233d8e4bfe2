//! Field tables to and from bytes, for the store (bindings and declare arguments are kept
//! exactly as clients sent them).

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;

use super::FieldTable;

pub fn encode(table: &FieldTable, out: &mut Vec<u8>) {
    let ctx = WriteContext::from(Vec::with_capacity(32));
    match gen_field_table(table)(ctx) {
        Ok(ctx) => out.extend_from_slice(&ctx.write),
        // Only fails on strings over 255 bytes, which no decoded table contains.
        Err(_) => out.extend_from_slice(&0u32.to_be_bytes()),
    }
}

/// Decode a table from the front of `input`; returns it and the rest.
pub fn decode(input: &[u8]) -> Option<(FieldTable, &[u8])> {
    let (rest, t) = parse_field_table(input).ok()?;
    Some((t, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AMQPValue;

    #[test]
    fn round_trip() {
        let mut t = FieldTable::default();
        t.insert("x-message-ttl".into(), AMQPValue::LongInt(5));
        let mut v = Vec::new();
        encode(&t, &mut v);
        v.push(9);
        let (back, rest) = decode(&v).unwrap();
        assert_eq!(back, t);
        assert_eq!(rest, &[9]);
    }
}
