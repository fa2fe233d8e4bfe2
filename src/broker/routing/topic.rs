//! Topic exchanges: a trie over dot-separated words. `*` matches exactly one word, `#` zero or
//! more. As in RabbitMQ, an empty key has no words: `#` matches it, `*` does not.
//!
//! Matching visits each `#` node at most once per number of words left (`Memo`): without that,
//! a pattern of many `#` against a key of many words (255 octets allow 128 of each) tries
//! exponentially many ways to split the words and a single publish never finishes.

use std::collections::{HashMap, HashSet};

use super::Dest;

#[derive(Debug, Default)]
pub struct Topic {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    words: HashMap<Box<[u8]>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    dests: Vec<Dest>,
}

fn words(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    // `split` yields one empty word for an empty key; RabbitMQ treats that as no words.
    let empty = key.is_empty();
    key.split(|b| *b == b'.').filter(move |_| !empty)
}

impl Topic {
    pub fn bind(&mut self, pattern: &str, dest: Dest) {
        let mut node = &mut self.root;
        for w in words(pattern.as_bytes()) {
            node = match w {
                b"*" => node.star.get_or_insert_with(Default::default),
                b"#" => node.hash.get_or_insert_with(Default::default),
                _ => node.words.entry(w.into()).or_default(),
            };
        }
        node.dests.push(dest);
    }

    pub fn route<'a>(&'a self, routing_key: &[u8], out: &mut Vec<&'a Dest>) {
        let key: Vec<&[u8]> = words(routing_key).collect();
        self.root.collect(&key, out, &mut Memo::default());
    }
}

/// The `#` nodes already entered, each with the number of words that were left: entering one
/// again the same way can only find the same bindings. A few entries stay in a vector (the
/// common case: no allocation beyond it); many go to a set.
#[derive(Default)]
struct Memo {
    few: Vec<(*const Node, usize)>,
    many: Option<HashSet<(*const Node, usize)>>,
}

impl Memo {
    const FEW: usize = 16;

    /// True the first time (node, words left) is seen.
    fn first(&mut self, node: &Node, left: usize) -> bool {
        let k = (node as *const Node, left);
        if let Some(set) = &mut self.many {
            return set.insert(k);
        }
        if self.few.contains(&k) {
            return false;
        }
        if self.few.len() < Self::FEW {
            self.few.push(k);
        } else {
            let mut set: HashSet<_> = self.few.drain(..).collect();
            set.insert(k);
            self.many = Some(set);
        }
        true
    }
}

impl Node {
    fn collect<'a>(&'a self, key: &[&[u8]], out: &mut Vec<&'a Dest>, memo: &mut Memo) {
        if let Some(h) = &self.hash {
            // `#` may swallow any number of the remaining words, including none.
            for skip in 0..=key.len() {
                if memo.first(h, key.len() - skip) {
                    h.collect(&key[skip..], out, memo);
                }
            }
        }
        let Some((first, rest)) = key.split_first() else {
            out.extend(self.dests.iter());
            return;
        };
        if let Some(n) = self.words.get(*first) {
            n.collect(rest, out, memo);
        }
        if let Some(n) = &self.star {
            n.collect(rest, out, memo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// (binding pattern, routing key, matches) — RabbitMQ's behaviour, from its topic tests.
    const CASES: &str = "
        a.b.c      a.b.c      yes
        a.*.c      a.b.c      yes
        a.*.c      a.c        no
        a.#        a          yes
        a.#        a.b.c      yes
        #          ''         yes
        #          a.b        yes
        *          ''         no
        *          a          yes
        *          a.b        no
        #.c        c          yes
        #.c        a.b.c      yes
        #.c        a.b.d      no
        a.#.c      a.c        yes
        a.#.c      a.b.b.c    yes
        a.#.c      a.b.b.d    no
        #.#        a          yes
        #.#        ''         yes
        *.#        ''         no
        *.#        a          yes
        *.*        a..        no
        *.*.*      a..        yes
        a.*.#      a.b        yes
        a.*.#      a          no
        ''         ''         yes
        ''         a          no
        a.b        a.b.c      no
        #.b.#      b          yes
        #.b.#      a.b.c      yes
        #.b.#      a.c        no
        *.b.*      a.b.c      yes
        *.b.*      a.b        no
    ";

    fn unquote(s: &str) -> &str {
        if s == "''" { "" } else { s }
    }

    #[test]
    fn table() {
        for line in CASES.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (pattern, key, want) = (unquote(f[0]), unquote(f[1]), f[2] == "yes");
            let mut t = Topic::default();
            t.bind(pattern, Dest::Exchange(Arc::from("x")));
            let mut out = Vec::new();
            t.route(key.as_bytes(), &mut out);
            assert_eq!(!out.is_empty(), want, "pattern {pattern:?} key {key:?}");
        }
    }

    /// The longest keys and patterns a client can send (255 octets: 128 one-letter words)
    /// match in polynomial time, and each binding is found once.
    #[test]
    fn long_patterns_of_hashes_match_quickly() {
        let words = |w: &str, n: usize| vec![w; n].join(".");
        let mut t = Topic::default();
        t.bind(&words("#", 128), Dest::Exchange(Arc::from("hashes")));
        let alternating = (0..64).map(|_| "#.a").collect::<Vec<_>>().join(".");
        t.bind(&alternating, Dest::Exchange(Arc::from("alternating")));
        t.bind(
            &format!("{}.b", words("#", 127)),
            Dest::Exchange(Arc::from("tail")),
        );
        for key in [words("a", 128), words("a", 127) + ".b", String::new()] {
            let mut out = Vec::new();
            t.route(key.as_bytes(), &mut out);
            let mut names: Vec<String> = out
                .iter()
                .map(|d| match d {
                    Dest::Exchange(n) => n.to_string(),
                    Dest::Queue(_) => unreachable!(),
                })
                .collect();
            names.sort();
            let want: &[&str] = match key.len() {
                0 => &["hashes"],
                _ if key.ends_with('b') => &["hashes", "tail"],
                _ => &["alternating", "hashes"],
            };
            assert_eq!(names, want, "key {key:?}");
        }
    }
}
