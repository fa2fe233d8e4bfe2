//! Direct exchanges: exact match of routing key and binding key. Persistent maps: a new
//! routing snapshot shares everything but the changed key with the old one.

use bytes::Bytes;

use super::{BindingId, Dest, Dests, Map};

#[derive(Debug, Default, Clone)]
pub struct Direct {
    by_key: Map<Bytes, Dests>,
}

impl Direct {
    pub fn bind(&mut self, key: &str, id: BindingId, dest: Dest) {
        self.by_key
            .entry(Bytes::copy_from_slice(key.as_bytes()))
            .or_default()
            .insert(id, dest);
    }

    pub fn unbind(&mut self, key: &str, id: BindingId) {
        let key = key.as_bytes();
        if let Some(dests) = self.by_key.get_mut(key) {
            dests.remove(id);
            if dests.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    pub fn route<'a>(&'a self, routing_key: &[u8], out: &mut Vec<&'a Dest>) {
        if let Some(d) = self.by_key.get(routing_key) {
            d.extend_into(out);
        }
    }
}
