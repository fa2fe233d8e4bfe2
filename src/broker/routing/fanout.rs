//! Fanout exchanges: every binding matches, whatever the routing key.

use super::{BindingId, Dest, Dests};

#[derive(Debug, Default, Clone)]
pub struct Fanout {
    dests: Dests,
}

impl Fanout {
    pub fn bind(&mut self, id: BindingId, dest: Dest) {
        self.dests.insert(id, dest);
    }

    pub fn unbind(&mut self, id: BindingId) {
        self.dests.remove(id);
    }

    pub fn route<'a>(&'a self, out: &mut Vec<&'a Dest>) {
        self.dests.extend_into(out);
    }
}
