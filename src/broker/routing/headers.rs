//! Headers exchanges: a binding's arguments are matched against the message's header table,
//! `x-match` = `all` (default) or `any` (and the 3.10 `all-with-x`/`any-with-x`, which also
//! compare `x-` keys). A binding value of void only requires the key to be present.

use crate::protocol::{AMQPValue, FieldTable};

use super::{BindingId, Dest};

#[derive(Debug, Clone)]
struct Binding {
    all: bool,
    args: Vec<(String, AMQPValue)>,
    dest: Dest,
}

#[derive(Debug, Default, Clone)]
pub struct Headers {
    bindings: imbl::OrdMap<BindingId, Binding>,
}

impl Headers {
    pub fn unbind(&mut self, id: BindingId) {
        self.bindings.remove(&id);
    }

    pub fn bind(&mut self, args: &FieldTable, id: BindingId, dest: Dest) {
        let mode = match args.inner().get("x-match") {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::ShortString(s)) => s.to_string(),
            _ => "all".to_string(),
        };
        let with_x = mode.ends_with("-with-x");
        let args = args
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.bindings.insert(
            id,
            Binding {
                all: !mode.starts_with("any"),
                args,
                dest,
            },
        );
    }

    pub fn route<'a>(&'a self, headers: Option<&FieldTable>, out: &mut Vec<&'a Dest>) {
        for b in self.bindings.values() {
            if matches(b, headers) {
                out.push(&b.dest);
            }
        }
    }
}

fn matches(b: &Binding, headers: Option<&FieldTable>) -> bool {
    let hit = |(k, v): &(String, AMQPValue)| {
        headers
            .and_then(|h| h.inner().get(k.as_str()))
            .is_some_and(|got| matches!(v, AMQPValue::Void) || values_equal(v, got))
    };
    if b.all {
        b.args.iter().all(hit)
    } else {
        b.args.iter().any(hit)
    }
}

/// Strings compare equal whether sent as short or long strings, as in RabbitMQ.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    fn text(v: &AMQPValue) -> Option<&[u8]> {
        match v {
            AMQPValue::LongString(s) => Some(s.as_bytes()),
            AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
            _ => None,
        }
    }
    match (text(a), text(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    fn routes(binding: &FieldTable, msg: Option<&FieldTable>) -> bool {
        let mut h = Headers::default();
        h.bind(binding, 1, Dest::Exchange(Arc::from("x")));
        let mut out = Vec::new();
        h.route(msg, &mut out);
        !out.is_empty()
    }

    #[test]
    fn all_and_any() {
        let all = table(&[("a", s("1")), ("b", s("2"))]);
        let any = table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
        let both = table(&[("a", s("1")), ("b", s("2")), ("c", s("3"))]);
        let one = table(&[("a", s("1"))]);
        let wrong = table(&[("a", s("9"))]);
        assert!(routes(&all, Some(&both)));
        assert!(!routes(&all, Some(&one)));
        assert!(routes(&any, Some(&one)));
        assert!(!routes(&any, Some(&wrong)));
        assert!(!routes(&any, None));
        // An `all` binding with no arguments matches everything.
        assert!(routes(&table(&[]), None));
    }

    #[test]
    fn x_keys_are_ignored_and_void_means_present() {
        let b = table(&[("x-extra", s("z")), ("k", AMQPValue::Void)]);
        assert!(routes(
            &b,
            Some(&table(&[("k", AMQPValue::LongLongInt(5))]))
        ));
        assert!(!routes(&b, Some(&table(&[("j", s("1"))]))));
        let sb = table(&[("k", AMQPValue::ShortString("v".into()))]);
        assert!(routes(&sb, Some(&table(&[("k", s("v"))]))));
    }
}
