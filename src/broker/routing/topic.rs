//! Topic exchanges: a trie over dot-separated words. `*` matches exactly one word, `#` zero or
//! more. As in RabbitMQ, an empty key has no words: `#` matches it, `*` does not.

use std::collections::HashMap;

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
        self.root.collect(&key, out);
    }
}

impl Node {
    fn collect<'a>(&'a self, key: &[&[u8]], out: &mut Vec<&'a Dest>) {
        if let Some(h) = &self.hash {
            // `#` may swallow any number of the remaining words, including none.
            for skip in 0..=key.len() {
                h.collect(&key[skip..], out);
            }
        }
        let Some((first, rest)) = key.split_first() else {
            out.extend(self.dests.iter());
            return;
        };
        if let Some(n) = self.words.get(*first) {
            n.collect(rest, out);
        }
        if let Some(n) = &self.star {
            n.collect(rest, out);
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
}
