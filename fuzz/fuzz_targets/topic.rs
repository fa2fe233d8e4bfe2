//! Topic routing on arbitrary patterns and keys: no panic, no runaway matching (many `#`
//! against many words), each binding found at most once, and an unbound binding never found
//! again while the snapshot taken before the unbind still finds what it found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use warren::broker::routing::Dest;
use warren::broker::routing::topic::Topic;

fn names(t: &Topic, key: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    t.route(key, &mut out);
    let mut ids: Vec<u64> = out
        .iter()
        .map(|d| match d {
            Dest::Exchange(x) => x.parse().unwrap(),
            Dest::Queue(_) => unreachable!(),
        })
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "a binding matched twice");
    ids
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == b'\n');
    let Some(key) = parts.next() else {
        return;
    };
    let key = &key[..key.len().min(255)];
    let mut t = Topic::default();
    let mut patterns = Vec::new();
    for pattern in parts.take(64) {
        if let Ok(p) = std::str::from_utf8(&pattern[..pattern.len().min(255)]) {
            let id = patterns.len() as u64;
            t.bind(p, id, Dest::Exchange(Arc::from(id.to_string())));
            patterns.push(p.to_string());
        }
    }
    let before = t.clone();
    let found = names(&t, key);
    // Unbind every other binding: the rest are found exactly as before.
    for (id, p) in patterns.iter().enumerate().filter(|(id, _)| id % 2 == 0) {
        t.unbind(p, id as u64);
    }
    let kept: Vec<u64> = found.iter().copied().filter(|id| id % 2 == 1).collect();
    assert_eq!(names(&t, key), kept);
    assert_eq!(names(&before, key), found, "the old snapshot changed");
});
