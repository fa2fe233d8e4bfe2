//! Field tables: a bound on their nesting, checked without recursion before any recursive
//! parser sees them, and tables to and from bytes for the store (bindings and declare
//! arguments are kept exactly as clients sent them).
//!
//! Invariant: no table reaches amq-protocol's parser (or anything that walks a decoded table:
//! encoding, comparing, dropping) unless `check_depth` passed it, so a hostile client cannot
//! make the broker recurse deeper than `DEPTH_CAP`.

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use thiserror::Error;

use super::FieldTable;

/// The deepest nesting any configuration may allow. Decoding, encoding, comparing and dropping
/// a table recurse once per level; this keeps that well inside a 2 MiB tokio worker stack.
/// Bytes the broker wrote itself (the store) are checked against it too.
pub const DEPTH_CAP: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TableError {
    #[error("field table nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("malformed field table")]
    Malformed,
}

fn u32_at(input: &[u8], at: usize) -> Option<usize> {
    let b = input.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Walk the table at the front of `input` (its 4-byte length first) and check that tables and
/// arrays nest at most `max_depth` levels (the table itself is level 1). Returns the bytes it
/// spans. Value types are amq-protocol's (RabbitMQ's): anything it would refuse is
/// `Malformed` here, so a table that passes is one its parser takes without surprises.
pub fn check_depth(input: &[u8], max_depth: usize) -> Result<usize, TableError> {
    #[derive(Clone, Copy)]
    struct Level {
        table: bool,
        end: usize,
    }
    let malformed = TableError::Malformed;
    let total = 4 + u32_at(input, 0).ok_or(malformed)?;
    if total > input.len() {
        return Err(malformed);
    }
    if max_depth == 0 {
        return Err(TableError::TooDeep(0));
    }
    let mut cur = Level {
        table: true,
        end: total,
    };
    // Allocates only for nested values.
    let mut outer: Vec<Level> = Vec::new();
    let mut pos = 4;
    loop {
        if pos == cur.end {
            match outer.pop() {
                Some(l) => {
                    cur = l;
                    continue;
                }
                None => return Ok(total),
            }
        }
        if cur.table {
            let key = *input.get(pos).ok_or(malformed)? as usize;
            let name = input.get(pos + 1..pos + 1 + key).ok_or(malformed)?;
            if std::str::from_utf8(name).is_err() {
                return Err(malformed);
            }
            pos += 1 + key;
        }
        if pos >= cur.end {
            return Err(malformed);
        }
        let kind = input[pos];
        pos += 1;
        let size = match kind {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'S' | b'x' => 4 + u32_at(input, pos).ok_or(malformed)?,
            b'F' | b'A' => {
                let end = pos + 4 + u32_at(input, pos).ok_or(malformed)?;
                if end > cur.end {
                    return Err(malformed);
                }
                if outer.len() + 2 > max_depth {
                    return Err(TableError::TooDeep(max_depth));
                }
                outer.push(cur);
                cur = Level {
                    table: kind == b'F',
                    end,
                };
                pos += 4;
                continue;
            }
            _ => return Err(malformed),
        };
        pos += size;
        if pos > cur.end {
            return Err(malformed);
        }
    }
}

pub fn encode(table: &FieldTable, out: &mut Vec<u8>) {
    let ctx = WriteContext::from(Vec::with_capacity(32));
    match gen_field_table(table)(ctx) {
        Ok(ctx) => out.extend_from_slice(&ctx.write),
        // Only fails on strings over 255 bytes, which no decoded table contains.
        Err(_) => out.extend_from_slice(&0u32.to_be_bytes()),
    }
}

/// Decode a table from the front of `input`; returns it and the rest. Used on bytes the broker
/// stored itself, so only the hard cap applies.
pub fn decode(input: &[u8]) -> Option<(FieldTable, &[u8])> {
    check_depth(input, DEPTH_CAP).ok()?;
    let (rest, t) = parse_field_table(input).ok()?;
    Some((t, rest))
}

/// Test and fuzzing helpers: tables of a chosen shape on the wire.
pub mod build {
    /// A table holding one entry "n" that nests `depth` levels in all (the outer table
    /// included), alternating tables and arrays, innermost a long string.
    pub fn nested(depth: usize) -> Vec<u8> {
        let mut inner = b"S\0\0\0\x01x".to_vec();
        for level in (2..=depth).rev() {
            let mut v = Vec::with_capacity(inner.len() + 7);
            if level % 2 == 0 {
                v.push(b'A');
                v.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            } else {
                v.push(b'F');
                v.extend_from_slice(&(inner.len() as u32 + 2).to_be_bytes());
                v.extend_from_slice(b"\x01n");
            }
            v.extend_from_slice(&inner);
            inner = v;
        }
        let mut out = ((inner.len() + 2) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(b"\x01n");
        out.extend_from_slice(&inner);
        out
    }
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

    fn depth_of(v: &AMQPValue) -> usize {
        match v {
            AMQPValue::FieldTable(t) => 1 + t.inner().values().map(depth_of).max().unwrap_or(0),
            AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn nested_builds_the_depth_it_says_and_the_limit_is_exact() {
        for depth in 1..=12 {
            let wire = build::nested(depth);
            let (rest, parsed) = parse_field_table(&wire[..]).expect("parses");
            assert!(rest.is_empty());
            assert_eq!(depth_of(&AMQPValue::FieldTable(parsed)), depth);
            assert_eq!(check_depth(&wire, depth), Ok(wire.len()));
            assert_eq!(
                check_depth(&wire, depth - 1),
                Err(TableError::TooDeep(depth - 1))
            );
        }
    }

    /// Every value type amq-protocol knows, in a table and an array, and cut-short and
    /// overlong variants: the walk says Malformed exactly when the parser refuses.
    #[test]
    fn the_walk_agrees_with_the_parser() {
        let mut inner = FieldTable::default();
        inner.insert("deep".into(), AMQPValue::Boolean(true));
        let mut t = FieldTable::default();
        let values = [
            AMQPValue::Boolean(false),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(amq_protocol::types::DecimalValue { scale: 2, value: 7 }),
            AMQPValue::LongString("text".into()),
            AMQPValue::Timestamp(9),
            AMQPValue::ByteArray(vec![1, 2, 3].into()),
            AMQPValue::Void,
            AMQPValue::FieldTable(inner.clone()),
        ];
        for (i, v) in values.iter().enumerate() {
            t.insert(format!("k{i}").into(), v.clone());
        }
        t.insert("arr".into(), AMQPValue::FieldArray(values.to_vec().into()));
        let mut wire = Vec::new();
        encode(&t, &mut wire);
        assert_eq!(check_depth(&wire, 3), Ok(wire.len()));
        assert_eq!(check_depth(&wire, 2), Err(TableError::TooDeep(2)));
        let agree = |bytes: &[u8]| {
            let parsed = parse_field_table(bytes).is_ok();
            let walked = check_depth(bytes, 8).is_ok();
            assert_eq!(parsed, walked, "{bytes:?}");
        };
        for cut in 0..wire.len() {
            agree(&wire[..cut]);
        }
        // Flip each byte in turn: lengths, type codes and key sizes all get disturbed.
        for at in 0..wire.len() {
            for delta in [1u8, 0x80] {
                let mut w = wire.clone();
                w[at] = w[at].wrapping_add(delta);
                agree(&w);
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        // 100,000 levels in 700 KB: the walk uses heap, not stack.
        let wire = build::nested(100_000);
        assert_eq!(
            check_depth(&wire, DEPTH_CAP),
            Err(TableError::TooDeep(DEPTH_CAP))
        );
        assert_eq!(decode(&wire), None);
    }

    /// The cap itself is safe: a table nested DEPTH_CAP deep is parsed, compared, encoded and
    /// dropped on a thread with a tokio worker's stack (2 MiB).
    #[test]
    fn the_cap_fits_a_worker_stack() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let wire = build::nested(DEPTH_CAP);
                let (t, rest) = decode(&wire).expect("decodes at the cap");
                assert!(rest.is_empty());
                let mut again = Vec::new();
                encode(&t, &mut again);
                assert_eq!(again, wire);
                assert_eq!(t.clone(), t);
                let _ = format!("{t:?}");
            })
            .unwrap()
            .join()
            .expect("no stack overflow at the cap");
    }
}
