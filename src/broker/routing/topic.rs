//! Topic exchanges: a trie over dot-separated words. `*` matches exactly one word, `#` zero or
//! more. As in RabbitMQ, an empty key has no words: `#` matches it, `*` does not.
//!
//! Matching visits each `#` node at most once per number of words left (`Memo`): without that,
//! a pattern of many `#` against a key of many words (255 octets allow 128 of each) tries
//! exponentially many ways to split the words and a single publish never finishes.
//!
//! The trie is persistent (children behind `Arc`, maps from imbl): binding copies only the
//! nodes on the pattern's path, so a new routing snapshot costs the pattern's length, however
//! many bindings the exchange has. Unbinding prunes nodes left empty.

use std::sync::Arc;

use super::{BindingId, Dest, Dests, Map, Seen};

#[derive(Debug, Default, Clone)]
pub struct Topic {
    root: Node,
}

#[derive(Debug, Default, Clone)]
struct Node {
    words: Map<Box<[u8]>, Arc<Node>>,
    star: Option<Arc<Node>>,
    hash: Option<Arc<Node>>,
    dests: Dests,
}

fn words(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    // `split` yields one empty word for an empty key; RabbitMQ treats that as no words.
    let empty = key.is_empty();
    key.split(|b| *b == b'.').filter(move |_| !empty)
}

impl Topic {
    pub fn bind(&mut self, pattern: &str, id: BindingId, dest: Dest) {
        let mut node = &mut self.root;
        for w in words(pattern.as_bytes()) {
            let child = match w {
                b"*" => node.star.get_or_insert_with(Default::default),
                b"#" => node.hash.get_or_insert_with(Default::default),
                _ => node.words.entry(w.into()).or_default(),
            };
            node = Arc::make_mut(child);
        }
        node.dests.insert(id, dest);
    }

    pub fn unbind(&mut self, pattern: &str, id: BindingId) {
        let path: Vec<&[u8]> = words(pattern.as_bytes()).collect();
        self.root.remove(&path, id);
    }

    pub fn route<'a>(&'a self, routing_key: &[u8], out: &mut Vec<&'a Dest>) {
        let key: Vec<&[u8]> = words(routing_key).collect();
        self.root.collect(&key, out, &mut Memo::default(), false);
    }
}

/// The `#` nodes already entered, each with the number of words that were left: entering one
/// again the same way can only find the same bindings.
type Memo = Seen<(*const Node, usize)>;

impl Node {
    fn is_empty(&self) -> bool {
        self.dests.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    /// Remove binding `id` at the end of `path`; children left empty are dropped. The
    /// recursion is as deep as the pattern has words (at most 128).
    fn remove(&mut self, path: &[&[u8]], id: BindingId) {
        let Some((first, rest)) = path.split_first() else {
            self.dests.remove(id);
            return;
        };
        let prune = |child: &mut Arc<Node>| {
            let node = Arc::make_mut(child);
            node.remove(rest, id);
            node.is_empty()
        };
        match *first {
            b"*" => {
                if self.star.as_mut().is_some_and(prune) {
                    self.star = None;
                }
            }
            b"#" => {
                if self.hash.as_mut().is_some_and(prune) {
                    self.hash = None;
                }
            }
            w => {
                if self.words.get_mut(w).is_some_and(prune) {
                    self.words.remove(w);
                }
            }
        }
    }

    /// `under_hash`: a `#` is on the path above. Only a `#` below another one can be entered
    /// twice with the same words left (the first one is entered once per split, each
    /// different), so only those consult the memo and paths with one `#` or none, the common
    /// case, pay nothing for it.
    fn collect<'a>(
        &'a self,
        key: &[&[u8]],
        out: &mut Vec<&'a Dest>,
        memo: &mut Memo,
        under_hash: bool,
    ) {
        if let Some(h) = &self.hash {
            // `#` may swallow any number of the remaining words, including none.
            for skip in 0..=key.len() {
                if !under_hash || memo.first((&**h as *const Node, key.len() - skip)) {
                    h.collect(&key[skip..], out, memo, true);
                }
            }
        }
        let Some((first, rest)) = key.split_first() else {
            self.dests.extend_into(out);
            return;
        };
        if let Some(n) = self.words.get(*first) {
            n.collect(rest, out, memo, under_hash);
        }
        if let Some(n) = &self.star {
            n.collect(rest, out, memo, under_hash);
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

    /// The names of the exchanges `key` routes to, sorted.
    fn routed(t: &Topic, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.route(key.as_bytes(), &mut out);
        let mut v: Vec<String> = out
            .iter()
            .map(|d| match d {
                Dest::Exchange(n) => n.to_string(),
                Dest::Queue(_) => unreachable!(),
            })
            .collect();
        v.sort();
        v
    }

    fn unquote(s: &str) -> &str {
        if s == "''" { "" } else { s }
    }

    #[test]
    fn table() {
        for line in CASES.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (pattern, key, want) = (unquote(f[0]), unquote(f[1]), f[2] == "yes");
            let mut t = Topic::default();
            t.bind(pattern, 1, Dest::Exchange(Arc::from("x")));
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
        t.bind(&words("#", 128), 1, Dest::Exchange(Arc::from("hashes")));
        let alternating = (0..64).map(|_| "#.a").collect::<Vec<_>>().join(".");
        t.bind(&alternating, 2, Dest::Exchange(Arc::from("alternating")));
        t.bind(
            &format!("{}.b", words("#", 127)),
            3,
            Dest::Exchange(Arc::from("tail")),
        );
        for key in [words("a", 128), words("a", 127) + ".b", String::new()] {
            let names = routed(&t, &key);
            let want: &[&str] = match key.len() {
                0 => &["hashes"],
                _ if key.ends_with('b') => &["hashes", "tail"],
                _ => &["alternating", "hashes"],
            };
            assert_eq!(names, want, "key {key:?}");
        }
    }

    /// Unbinding removes exactly its binding and prunes what it leaves empty; a snapshot taken
    /// before a change keeps routing as it did.
    #[test]
    fn unbind_prunes_and_snapshots_are_independent() {
        let dest = |n: &str| Dest::Exchange(Arc::from(n));
        let mut t = Topic::default();
        t.bind("a.*.c", 1, dest("one"));
        t.bind("a.#", 2, dest("two"));
        t.bind("a.*.c", 3, dest("three"));
        let before = t.clone();
        t.unbind("a.*.c", 1);
        assert_eq!(routed(&t, "a.b.c"), ["three", "two"]);
        assert_eq!(routed(&before, "a.b.c"), ["one", "three", "two"]);
        t.unbind("a.*.c", 3);
        t.unbind("a.#", 2);
        t.unbind("never.bound", 9);
        assert!(t.root.is_empty(), "nothing left behind: {:?}", t.root);
        assert_eq!(routed(&before, "a.x"), ["two"]);
    }
}
