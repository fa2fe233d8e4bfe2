//! The store's Raft log written and read back across reopenings: appends, snapshots and
//! their compactions, kept entries.

use super::*;

fn write(store: &Store, ops: Vec<Op>) {
    let (tx, rx) = std::sync::mpsc::channel();
    store.submit(
        ops,
        true,
        Some(Box::new(move |r: Result<(), StoreError>| {
            let _ = tx.send(r);
        })),
    );
    rx.recv().unwrap().unwrap();
}

fn append(group: u64, first: u64, n: u64) -> Op {
    Op::RaftAppend {
        group,
        first,
        entries: (first..first + n).map(|i| vec![i as u8]).collect(),
        stale_to: u64::MAX,
    }
}

/// A regression: an append's range delete of a stale tail also deleted the group's hard
/// state (it sorts after the entries), so a restart forgot the term and vote.
#[test]
fn raft_appends_keep_the_hard_state_and_a_deleted_group_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let state = |group: u64| Op::RaftState {
        group,
        state: vec![group as u8; 3],
    };
    write(
        &store,
        vec![state(4), append(4, 1, 5), state(5), append(5, 1, 2)],
    );
    // A new leader's log replaces the tail: entries 4 and 5 go, the state stays.
    write(&store, vec![append(4, 3, 1)]);
    write(&store, vec![Op::RaftDelete { group: 5 }]);
    store.close();
    drop(store);
    let (store, r) = Store::open(dir.path()).unwrap();
    let log = &r.raft[&4];
    assert_eq!(log.state, Some(vec![4; 3]));
    assert_eq!((log.first, log.entries.len()), (1, 3));
    assert_eq!(log.entries[2], vec![3]);
    assert!(!r.raft.contains_key(&5), "{:?}", r.raft.get(&5));
    store.close();
}

#[test]
fn a_snapshot_compacts_the_log_before_it_and_a_leaders_replaces_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let snapshot = |group: u64, below: u64| Op::RaftSnapshot {
        group,
        snapshot: vec![group as u8, below as u8],
        compact: match below {
            u64::MAX => Compact::Replace {
                floor: 7,
                kept: Vec::new(),
                forget: Vec::new(),
            },
            below => Compact::Below {
                from: 1,
                below,
                keep: Vec::new(),
                forget: Vec::new(),
            },
        },
    };
    write(&store, vec![append(4, 1, 9), append(5, 1, 3)]);
    write(&store, vec![snapshot(4, 6), snapshot(5, u64::MAX)]);
    write(&store, vec![append(5, 7, 2)]);
    store.close();
    drop(store);
    let (store, r) = Store::open(dir.path()).unwrap();
    let log = &r.raft[&4];
    assert_eq!(log.snapshot, Some(vec![4, 6]));
    assert_eq!((log.first, log.entries.len()), (6, 4));
    assert_eq!(log.entries[0], vec![6]);
    let log = &r.raft[&5];
    assert_eq!((log.first, log.entries.len()), (7, 2));
    write(&store, vec![Op::RaftDelete { group: 4 }]);
    store.close();
    drop(store);
    let (store, r) = Store::open(dir.path()).unwrap();
    assert!(!r.raft.contains_key(&4), "{:?}", r.raft.get(&4));
    store.close();
}

/// Entries kept past a snapshot stay readable but are not read at start; forgotten
/// ones go; a leader's snapshot replaces the whole log, but the kept entries staged ahead
/// of it.
#[test]
fn kept_entries_stay_before_the_floor_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let below = |from, below, keep: &[u64], forget: &[u64]| Op::RaftSnapshot {
        group: 4,
        snapshot: vec![below as u8],
        compact: Compact::Below {
            from,
            below,
            keep: keep.to_vec(),
            forget: forget.to_vec(),
        },
    };
    write(&store, vec![append(4, 1, 12), append(5, 1, 3)]);
    // 2, 3 and 7 kept (9 is past `below`: still in the log proper).
    write(&store, vec![below(1, 8, &[2, 3, 7, 9], &[])]);
    let read = |store: &Store, g, ix: &[u64]| store.read_raft_entries(g, ix).unwrap();
    let got = read(&store, 4, &[1, 2, 3, 4, 7, 8]);
    let want = [
        None,
        Some(vec![2]),
        Some(vec![3]),
        None,
        Some(vec![7]),
        Some(vec![8]),
    ];
    assert_eq!(got, want);
    // 3 is settled; 8 and 10 are compacted, 9 kept.
    write(&store, vec![below(8, 11, &[2, 7, 9], &[3, 9])]);
    store.close();
    drop(store);
    let (store, r) = Store::open(dir.path()).unwrap();
    let log = &r.raft[&4];
    assert_eq!((log.floor, log.first, log.entries.len()), (11, 11, 2));
    let got = read(&store, 4, &[2, 3, 7, 8, 9, 10, 11]);
    let want = [
        Some(vec![2]),
        None,
        Some(vec![7]),
        None,
        Some(vec![9]),
        None,
    ];
    assert_eq!(got[..6], want);
    assert_eq!(r.raft[&5].entries.len(), 3, "another group untouched");
    // A leader's snapshot at 20 comes: first its kept entries 5 and 18, staged, with 3, 12
    // and 19 of a sending given up, and 11 (in the log proper: read from there).
    let stage = |entries: &[(u64, u8)]| Op::RaftStage {
        group: 4,
        entries: entries.iter().map(|(i, b)| (*i, vec![*b])).collect(),
    };
    write(&store, vec![stage(&[(3, 33), (5, 55), (11, 99), (12, 12)])]);
    write(&store, vec![stage(&[(18, 18), (19, 19)])]);
    store.close();
    drop(store);
    let (store, r) = Store::open(dir.path()).unwrap();
    assert_eq!(
        r.raft[&4].entries.len(),
        2,
        "staged entries are not read at start"
    );
    let got = read(&store, 4, &[3, 5, 11, 18]);
    assert_eq!(
        got,
        [
            Some(vec![33]),
            Some(vec![55]),
            Some(vec![11]),
            Some(vec![18])
        ]
    );
    let replace = Op::RaftSnapshot {
        group: 4,
        snapshot: vec![20],
        compact: Compact::Replace {
            floor: 21,
            kept: vec![5, 18],
            forget: vec![11, 12],
        },
    };
    write(&store, vec![replace, append(4, 21, 2)]);
    store.close();
    drop(store);
    let (store, r) = Store::open(dir.path()).unwrap();
    let log = &r.raft[&4];
    assert_eq!((log.floor, log.first, log.entries.len()), (21, 21, 2));
    let got = read(&store, 4, &[2, 3, 5, 9, 11, 12, 18, 19, 21]);
    let want = [
        None,
        None,
        Some(vec![55]),
        None,
        None,
        None,
        Some(vec![18]),
        None,
    ];
    assert_eq!(got[..8], want);
    assert_eq!(got[8], Some(vec![21]));
    // A staging given up goes; a deleted group's staged entries go with it.
    write(&store, vec![stage(&[(30, 30), (31, 31)])]);
    write(
        &store,
        vec![Op::RaftUnstage {
            group: 4,
            indexes: vec![30],
        }],
    );
    assert_eq!(read(&store, 4, &[30, 31]), [None, Some(vec![31])]);
    write(&store, vec![Op::RaftDelete { group: 4 }]);
    assert_eq!(read(&store, 4, &[5, 18, 31]), [None, None, None]);
    store.close();
}
