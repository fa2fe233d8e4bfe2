//! Key and value encodings. Keys are big-endian and length-prefixed so that RocksDB's byte
//! order is the order we need: a queue's index entries sort by message id, i.e. by
//! publish order.

use bytes::Bytes;

use super::{StoredBinding, StoredExchange, StoredMessage, StoredQueue};
use crate::protocol::{FieldTable, table};

pub const EXCHANGE: u8 = b'x';
pub const QUEUE: u8 = b'q';
pub const BINDING: u8 = b'b';
/// Raft column family: a group's hard state, its log entries and its last snapshot.
pub const RAFT_STATE: u8 = b's';
pub const RAFT_ENTRY: u8 = b'e';
pub const RAFT_SNAPSHOT: u8 = b't';
/// Where the log proper starts: the entries before it are the ones a state machine keeps
/// past its snapshot (`Compact`). Sorts before the entries, so a read finds it first.
pub const RAFT_FLOOR: u8 = b'a';
/// Entries of a leader's snapshot staged on a follower (`Op::RaftStage`): kept entries
/// that came in chunks ahead of the snapshot. Read where an entry key has none.
pub const RAFT_STAGED: u8 = b'k';

/// `[group][kind]`, then for entries the index: big-endian, so a group's entries are
/// contiguous and in index order.
pub fn raft_key(group: u64, kind: u8, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(kind);
    if kind == RAFT_ENTRY || kind == RAFT_STAGED {
        k.extend_from_slice(&index.to_be_bytes());
    }
    k
}

/// Just past a group's last possible entry key, and before its hard state (`RAFT_STATE`
/// sorts after `RAFT_ENTRY`): the end of a range that deletes entries only.
pub fn raft_entries_end(group: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(RAFT_ENTRY + 1);
    k
}

/// Just past a group's last possible staged entry key.
pub fn raft_staged_end(group: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(RAFT_STAGED + 1);
    k
}

/// (group, kind, index) of a Raft key.
pub fn decode_raft_key(key: &[u8]) -> Option<(u64, u8, u64)> {
    let group = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let kind = *key.get(8)?;
    match kind {
        RAFT_STATE | RAFT_SNAPSHOT | RAFT_FLOOR if key.len() == 9 => Some((group, kind, 0)),
        RAFT_ENTRY | RAFT_STAGED if key.len() == 17 => {
            Some((group, kind, u64::from_be_bytes(key[9..].try_into().ok()?)))
        }
        _ => None,
    }
}

fn lp(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&s[..len]);
}

/// Reads length-prefixed fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn lp(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.0.split_first()?;
        let len = len as usize;
        if rest.len() < len {
            return None;
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        Some(s)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.lp()?.to_vec()).ok()
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        if self.0.len() < 8 {
            return None;
        }
        let (n, rest) = self.0.split_at(8);
        self.0 = rest;
        Some(u64::from_be_bytes(n.try_into().ok()?))
    }

    fn table(&mut self) -> Option<FieldTable> {
        let (t, rest) = table::decode(self.0)?;
        self.0 = rest;
        Some(t)
    }
}

pub fn exchange_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut k = vec![EXCHANGE];
    lp(&mut k, vhost.as_bytes());
    lp(&mut k, name.as_bytes());
    k
}

pub fn exchange_value(x: &StoredExchange) -> Vec<u8> {
    let mut v = Vec::new();
    lp(&mut v, x.kind.as_bytes());
    v.push(x.auto_delete as u8 | (x.internal as u8) << 1);
    table::encode(&x.arguments, &mut v);
    v
}

pub fn decode_exchange(key: &[u8], value: &[u8]) -> Option<StoredExchange> {
    let mut k = Reader(key.get(1..)?);
    let mut v = Reader(value);
    let vhost = k.string()?;
    let name = k.string()?;
    let kind = v.string()?;
    let flags = v.byte()?;
    Some(StoredExchange {
        vhost,
        name,
        kind,
        auto_delete: flags & 1 != 0,
        internal: flags & 2 != 0,
        arguments: v.table()?,
    })
}

pub fn queue_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut k = vec![QUEUE];
    lp(&mut k, vhost.as_bytes());
    lp(&mut k, name.as_bytes());
    k
}

pub fn queue_value(q: &StoredQueue) -> Vec<u8> {
    let mut v = q.id.to_be_bytes().to_vec();
    v.push(q.auto_delete as u8);
    table::encode(&q.arguments, &mut v);
    // Appended, so rows written before quorum queues existed read as classic.
    if let Some(g) = q.group {
        v.extend_from_slice(&g.to_be_bytes());
    }
    v
}

pub fn decode_queue(key: &[u8], value: &[u8]) -> Option<StoredQueue> {
    let mut k = Reader(key.get(1..)?);
    let mut v = Reader(value);
    let (vhost, name) = (k.string()?, k.string()?);
    let (id, auto_delete, arguments) = (v.u64()?, v.byte()? & 1 != 0, v.table()?);
    let group = if v.0.is_empty() { None } else { Some(v.u64()?) };
    Some(StoredQueue {
        vhost,
        name,
        id,
        auto_delete,
        arguments,
        group,
    })
}

pub fn binding_key(b: &StoredBinding) -> Vec<u8> {
    let mut k = vec![BINDING];
    lp(&mut k, b.vhost.as_bytes());
    lp(&mut k, b.source.as_bytes());
    k.push(if b.to_queue { b'q' } else { b'x' });
    lp(&mut k, b.destination.as_bytes());
    lp(&mut k, b.routing_key.as_bytes());
    table::encode(&b.arguments, &mut k);
    k
}

pub fn decode_binding(key: &[u8]) -> Option<StoredBinding> {
    let mut k = Reader(key.get(1..)?);
    let vhost = k.string()?;
    let source = k.string()?;
    let to_queue = k.byte()? == b'q';
    Some(StoredBinding {
        vhost,
        source,
        to_queue,
        destination: k.string()?,
        routing_key: k.string()?,
        arguments: k.table()?,
    })
}

pub fn message_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn message_value(m: &StoredMessage) -> Vec<u8> {
    let mut v = Vec::with_capacity(
        2 + m.exchange.len() + m.routing_key.len() + 4 + m.properties.len() + m.body.len(),
    );
    lp(&mut v, &m.exchange);
    lp(&mut v, &m.routing_key);
    v.extend_from_slice(&(m.properties.len() as u32).to_be_bytes());
    v.extend_from_slice(&m.properties);
    v.extend_from_slice(&m.body);
    v
}

/// Decode a message row; its parts are slices of one buffer (no copies).
pub fn decode_message(value: Bytes) -> Option<StoredMessage> {
    let mut r = Reader(&value);
    let exchange = r.lp()?.len();
    let routing_key = r.lp()?.len();
    let at = 2 + exchange + routing_key;
    let plen = u32::from_be_bytes(value.get(at..at + 4)?.try_into().ok()?) as usize;
    let props_end = at + 4 + plen;
    if value.len() < props_end {
        return None;
    }
    Some(StoredMessage {
        exchange: value.slice(1..1 + exchange),
        routing_key: value.slice(2 + exchange..at),
        properties: value.slice(at + 4..props_end),
        body: value.slice(props_end..),
    })
}

pub fn index_key(queue: u64, msg: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&queue.to_be_bytes());
    k[8..].copy_from_slice(&msg.to_be_bytes());
    k
}

pub fn decode_index_key(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(key[..8].try_into().ok()?),
        u64::from_be_bytes(key[8..].try_into().ok()?),
    ))
}

/// Index value flags.
pub const DELIVERED: u8 = 1;

/// An index entry's value: flags, then the body size (so that byte limits hold for messages
/// that are only on disk, without reading their bodies).
pub fn index_value(delivered: bool, size: u32) -> [u8; 5] {
    let mut v = [0u8; 5];
    v[0] = if delivered { DELIVERED } else { 0 };
    v[1..].copy_from_slice(&size.to_be_bytes());
    v
}

/// (delivered, body size); the size is 0 when unknown.
pub fn decode_index_value(v: &[u8]) -> (bool, u32) {
    let delivered = v.first().is_some_and(|f| f & DELIVERED != 0);
    let size = v
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes);
    (delivered, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_rows_round_trip() {
        let m = StoredMessage {
            exchange: Bytes::from_static(b"ex"),
            routing_key: Bytes::from_static(b"a.b"),
            properties: Bytes::from_static(&[0x10, 0, 2]),
            body: Bytes::from_static(b"body"),
        };
        let back = decode_message(Bytes::from(message_value(&m))).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn index_keys_sort_by_queue_then_message() {
        assert!(index_key(1, 300) < index_key(2, 1));
        assert!(index_key(1, 2) < index_key(1, 256));
        assert_eq!(decode_index_key(&index_key(7, 9)), Some((7, 9)));
    }

    #[test]
    fn bindings_round_trip() {
        let b = StoredBinding {
            vhost: "/".into(),
            source: "x".into(),
            to_queue: true,
            destination: "q".into(),
            routing_key: "k".into(),
            arguments: FieldTable::default(),
        };
        assert_eq!(decode_binding(&binding_key(&b)), Some(b));
    }
}
