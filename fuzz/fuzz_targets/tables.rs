//! Field tables, differentially: the broker's non-recursive depth walk against amq-protocol's
//! parser. Whatever the walk passes, the parser takes whole; whatever the parser takes, the
//! walk calls well-formed (at most too deep); a decoded table encodes back to the same bytes'
//! meaning.
#![no_main]

use amq_protocol::types::parsing::parse_field_table;
use libfuzzer_sys::fuzz_target;
use warren::protocol::table::{self, DEPTH_CAP, TableError};

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let depth = 1 + knob as usize % 64;
    match table::check_depth(input, depth) {
        Ok(span) => {
            let (rest, parsed) = parse_field_table(input).expect("the walk passed it");
            assert_eq!(input.len() - rest.len(), span);
            let mut again = Vec::new();
            table::encode(&parsed, &mut again);
            let (back, rest) = table::decode(&again).expect("our own encoding decodes");
            assert!(rest.is_empty());
            assert_eq!(format!("{back:?}"), format!("{parsed:?}"));
        }
        Err(TableError::Malformed) => {
            // The parser must refuse it too (only checked where the parser is safe to run).
            if table::check_depth(input, DEPTH_CAP) == Err(TableError::Malformed) {
                assert!(
                    parse_field_table(input).is_err(),
                    "walk and parser disagree"
                );
            }
        }
        Err(TableError::TooDeep(_)) => {}
    }
});
