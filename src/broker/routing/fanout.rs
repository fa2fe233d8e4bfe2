//! Fanout exchanges: every binding matches, whatever the routing key.

use super::Dest;

#[derive(Debug, Default)]
pub struct Fanout {
    dests: Vec<Dest>,
}

impl Fanout {
    pub fn bind(&mut self, dest: Dest) {
        self.dests.push(dest);
    }

    pub fn route<'a>(&'a self, out: &mut Vec<&'a Dest>) {
        out.extend(self.dests.iter());
    }
}
