//! Direct exchanges: exact match of routing key and binding key.

use std::collections::HashMap;

use bytes::Bytes;

use super::Dest;

#[derive(Debug, Default)]
pub struct Direct {
    by_key: HashMap<Bytes, Vec<Dest>>,
}

impl Direct {
    pub fn bind(&mut self, key: &str, dest: Dest) {
        self.by_key
            .entry(Bytes::copy_from_slice(key.as_bytes()))
            .or_default()
            .push(dest);
    }

    pub fn route<'a>(&'a self, routing_key: &[u8], out: &mut Vec<&'a Dest>) {
        if let Some(d) = self.by_key.get(routing_key) {
            out.extend(d.iter());
        }
    }
}
