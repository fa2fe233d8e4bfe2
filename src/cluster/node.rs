//! This node's cluster runtime: one task drives the node's Raft groups (ticks every
//! `raft::TICK`, steps messages from the links, takes proposals) and does each round's ready
//! work, handing committed metadata entries to the broker's `Apply` in log order. The
//! `Cluster` handle proposes and reports who leads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::link::{Frame, Inbound, Links, Session, Sessions};
use super::raft::{Group, TICK};
use super::{ClusterConfig, ClusterError, META_GROUP};
use crate::store::{RaftLog, Store};

/// Inputs taken in one round before the ready work (bounds a round's latency).
const ROUND: usize = 1024;

/// The metadata group's state machine, run on the cluster task.
pub trait Apply: Send + 'static {
    /// A committed entry, in log order; after a restart every committed entry comes again,
    /// from the first.
    fn apply(&mut self, index: u64, data: &[u8]);
}

enum Request {
    /// An entry to propose; answered once this node's Raft took it.
    Propose {
        data: Vec<u8>,
        done: oneshot::Sender<Result<(), ClusterError>>,
    },
    /// Answered once this node has applied everything committed when it was asked (Raft's
    /// read index: the leader confirms with a majority that it still leads). Dropped without
    /// an answer if no leader is known.
    Read { done: oneshot::Sender<()> },
}

pub struct Cluster {
    pub config: ClusterConfig,
    requests: mpsc::Sender<Request>,
    leader: watch::Receiver<u64>,
    links: Arc<Links>,
    /// Forwarded work from peers, until the broker takes it.
    forwarded: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Inbound>>>,
}

impl Cluster {
    /// Open the links and the metadata group (its log as `saved` holds it) and start driving
    /// them.
    pub async fn start(
        config: ClusterConfig,
        store: Arc<Store>,
        saved: &BTreeMap<u64, RaftLog>,
        apply: Box<dyn Apply>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let (in_tx, in_rx) = mpsc::channel(4096);
        let (fwd_tx, fwd_rx) = mpsc::unbounded_channel();
        let links = Links::start(&config, in_tx, fwd_tx)
            .await
            .map_err(|e| ClusterError::Listen(e.to_string()))?;
        let group = Group::open(
            META_GROUP,
            &config,
            saved.get(&META_GROUP),
            store,
            links.clone(),
        )?;
        let (p_tx, p_rx) = mpsc::channel(1024);
        let (l_tx, l_rx) = watch::channel(0);
        tokio::spawn(run(group, in_rx, p_rx, apply, l_tx));
        tracing::info!(
            node = config.node_id,
            listen = %config.listen,
            peers = config.peers.len(),
            "cluster node started"
        );
        Ok(Arc::new(Cluster {
            config,
            requests: p_tx,
            leader: l_rx,
            links,
            forwarded: std::sync::Mutex::new(Some(fwd_rx)),
        }))
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Hand an entry to the metadata group: Ok once this node's Raft took it (forwarding it
    /// to the leader). It may still be lost if leadership changes before it commits; the
    /// caller learns of the commit from its own state machine.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(), ClusterError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(Request::Propose { data, done })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }

    /// Resolves once this node has applied every entry committed before the call; never
    /// resolves if the read is lost (no leader, or none reachable): the caller bounds it.
    pub async fn read(&self) -> Result<(), ClusterError> {
        let (done, rx) = oneshot::channel();
        self.requests
            .send(Request::Read { done })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        match rx.await {
            Ok(()) => Ok(()),
            // Dropped: lost, as far as the caller is concerned.
            Err(_) => std::future::pending().await,
        }
    }

    /// The metadata leader as this node knows it (0: none), as it changes.
    pub fn leader(&self) -> watch::Receiver<u64> {
        self.leader.clone()
    }

    /// Which peers have a link up, and its session, as it changes.
    pub fn links_up(&self) -> watch::Receiver<Sessions> {
        self.links.up()
    }

    /// Forwarded work for a peer's session (waits for room; dropped if the session ended).
    pub async fn forward(&self, to: u64, session: Session, msg: bytes::Bytes) {
        self.links.forward(to, session, msg).await;
    }

    /// Forwarded work from peers: once, for whoever serves it.
    pub fn take_forwarded(&self) -> Option<mpsc::UnboundedReceiver<Inbound>> {
        self.forwarded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Reads waiting for their read index, then for this node to apply up to it.
#[derive(Default)]
struct Reads {
    next: u64,
    asked: HashMap<Vec<u8>, oneshot::Sender<()>>,
    /// (read index, waiter), answered once applied reaches the index.
    indexed: Vec<(u64, oneshot::Sender<()>)>,
}

impl Reads {
    fn ask(&mut self, group: &mut Group, done: oneshot::Sender<()>) {
        self.next += 1;
        let ctx = self.next.to_be_bytes().to_vec();
        // A read whose answer never comes (lost with a leader) is dropped in time: the
        // caller has given up by then.
        if self.asked.len() > 4 * ROUND {
            self.asked.clear();
        }
        self.asked.insert(ctx.clone(), done);
        group.read_index(ctx);
    }

    fn answer(&mut self, group: &mut Group) {
        for (index, ctx) in group.take_read_states() {
            if let Some(done) = self.asked.remove(&ctx) {
                self.indexed.push((index, done));
            }
        }
        let applied = group.applied();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.indexed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.indexed = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }
}

async fn run(
    mut group: Group,
    mut inbound: mpsc::Receiver<Inbound>,
    mut requests: mpsc::Receiver<Request>,
    mut apply: Box<dyn Apply>,
    leader: watch::Sender<u64>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known = (0, 0);
    let mut reads = Reads::default();
    loop {
        tokio::select! {
            _ = tick.tick() => group.tick(),
            m = inbound.recv() => match m {
                Some(m) => step(&mut group, m),
                None => break,
            },
            r = requests.recv() => match r {
                Some(r) => request(&mut group, &mut reads, r),
                None => break,
            },
        }
        for _ in 0..ROUND {
            match inbound.try_recv() {
                Ok(m) => step(&mut group, m),
                Err(_) => break,
            }
        }
        for _ in 0..ROUND {
            match requests.try_recv() {
                Ok(r) => request(&mut group, &mut reads, r),
                Err(_) => break,
            }
        }
        if let Err(e) = group.ready(&mut |i, d| apply.apply(i, d)).await {
            // Only a store failure gets here, and it stops the node by itself.
            tracing::error!("metadata group stopped: {e}");
            break;
        }
        reads.answer(&mut group);
        let now = (group.leader(), group.term());
        if now != known {
            match now.0 {
                0 => tracing::info!(
                    term = now.1,
                    "no metadata leader (an election is under way)"
                ),
                id if group.is_leader() => {
                    tracing::info!(
                        term = now.1,
                        "this node (node {id}) leads the metadata group"
                    )
                }
                id => tracing::info!(term = now.1, "node {id} leads the metadata group"),
            }
            leader.send_replace(now.0);
            known = now;
        }
    }
    leader.send_replace(0);
}

fn step(group: &mut Group, m: Inbound) {
    match m.frame {
        Frame::Raft { group: g, msg } if g == group.id => group.step(&msg),
        Frame::Raft { group: g, .. } => {
            tracing::debug!(
                from = m.from,
                group = g,
                "message for an unknown raft group"
            )
        }
        _ => {}
    }
}

fn request(group: &mut Group, reads: &mut Reads, r: Request) {
    match r {
        Request::Propose { data, done } => {
            let _ = done.send(group.propose(data));
        }
        Request::Read { done } => reads.ask(group, done),
    }
}
