//! Topic routing on arbitrary patterns and keys: no panic, no runaway matching (many `#`
//! against many words), and each binding found at most once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use warren::broker::routing::Dest;
use warren::broker::routing::topic::Topic;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == b'\n');
    let Some(key) = parts.next() else {
        return;
    };
    let mut t = Topic::default();
    let mut n = 0;
    for pattern in parts.take(64) {
        if let Ok(p) = std::str::from_utf8(&pattern[..pattern.len().min(255)]) {
            t.bind(p, Dest::Exchange(Arc::from(n.to_string())));
            n += 1;
        }
    }
    let mut out = Vec::new();
    t.route(&key[..key.len().min(255)], &mut out);
    let mut names: Vec<String> = out
        .iter()
        .map(|d| match d {
            Dest::Exchange(x) => x.to_string(),
            Dest::Queue(_) => unreachable!(),
        })
        .collect();
    let all = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all, "a binding matched twice");
});
