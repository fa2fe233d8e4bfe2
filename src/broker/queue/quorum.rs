//! A quorum queue replica: one task per member node that runs a `QueueState` over the
//! queue's Raft group. Commands from connections become log entries (`entry::QEntry`); every
//! replica applies the committed entries in log order, and each carries out only the effects
//! that belong to its node: deliveries to consumers whose connection is here, and answers to
//! the commands it proposed. So a consumer's node delivers from its own replica.
//!
//! Invariants: nothing is answered before its entry is committed (on a majority's disk) and
//! applied here: a publish is confirmed only then, and a proposal not seen applied within the
//! command timeout fails (a publish is nacked). A proposal lost with a leader is proposed
//! again (on a leader change, or after `REPROPOSE`), and applied once: replicas skip an
//! (origin, request) they applied already, deterministically. Time comes from the entries.
//!
//! Snapshots (`snapshot`) bound the log: a replica restarts from its last snapshot and the
//! entries after it, and a follower too far behind is sent the leader's.
//!
//! A body is stored once, in the log: the state holds each message's log position, and the
//! message itself only within the queue's memory budget; past it a delivery reads the body
//! back from the log (`loader`), and the log keeps the entries of live messages past a
//! snapshot until they are settled.
//!
//! Members are `x-quorum-initial-group-size` nodes; another node uses the queue through a
//! member (`remote/stub.rs`), whose replica proposes for it and relays its deliveries.
//! Members are added and removed by the Raft group first, then the metadata
//! (`broker/members.rs`), which starts or stops this node's replica.

mod apply;
mod command;
mod credit;
mod entry;
mod leave;
mod loader;
mod placement;
mod snapshot;
mod to_replica;

use apply::fail;
use to_replica::{FromRaft, ToReplica};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::classic::OnDeleted;
use super::receipt::Receipt;
use super::state::{self, Meta, QueueState};
use super::{ConnEvent, ConsumerSpec, GetReply, QueueCmd, QueueHandle, QueueShared, Stat};
use crate::broker::applied::Applied;
use crate::broker::args::{self, Overflow, QueueArgs};
use crate::broker::clock;
use crate::broker::ids::{ChannelId, ConsumerId, NodeId};
use crate::broker::memory::MemoryMonitor;
use crate::broker::remote::{self, TakeOver};
use crate::broker::topology::Quorum;
use crate::cluster::Cluster;
use crate::error::Error;
use crate::protocol::FieldTable;
pub use entry::{QBody, QEntry, QOp};
pub use placement::{Load, Locator, leading, memberships, place};

/// A proposal not seen applied by then is proposed again (it may have been dropped).
const REPROPOSE: Duration = Duration::from_millis(1000);
/// Applied (origin, request) pairs remembered for skipping duplicates.
const REMEMBERED: usize = 65_536;
/// A read index not answered by then is asked for again.
const READ_RETRY: Duration = Duration::from_millis(100);
/// RabbitMQ's credit for a quorum queue consumer without a prefetch.
const DEFAULT_PREFETCH: u32 = 2000;

pub struct QuorumSpec {
    pub name: Arc<str>,
    pub id: u64,
    pub arguments: FieldTable,
    pub vhost: Arc<str>,
    pub placement: Quorum,
    /// This node; the placement's first member stands for election at once.
    pub me: NodeId,
    /// The Raft runtime, once this node has it (a cluster node applies its metadata log,
    /// which starts replicas, before the runtime is handed out).
    pub runtime: watch::Receiver<Option<Runtime>>,
    pub inbox: usize,
    pub on_deleted: OnDeleted,
    /// Messages held count against the memory alarm, as a classic queue's do.
    pub memory: Arc<MemoryMonitor>,
    /// Bytes of messages held in memory before new ones are read back from the log when
    /// delivered (`queue_memory_budget_bytes`).
    pub memory_budget: usize,
    /// This node's forwarding (a cluster node): used as a stub once this node leaves the
    /// queue's members.
    pub remote: Option<Arc<remote::Forwarder>>,
}

/// Where quorum queues run: this node's Raft runtime and the nodes that can be members.
#[derive(Clone)]
pub struct Runtime {
    pub cluster: Arc<Cluster>,
    pub nodes: Vec<NodeId>,
}

/// A node's Raft id: its node id, and 1 for a single node (node 0; Raft ids are not 0).
pub fn raft_id(node: NodeId) -> u64 {
    node.max(1)
}

/// Start this node's replica of a quorum queue; it ends when the queue is deleted.
pub fn spawn(spec: QuorumSpec) -> QueueHandle {
    let (tx, rx) = mpsc::channel(spec.inbox.max(1));
    let mut shared = QueueShared::new(
        spec.name.clone(),
        spec.id,
        None,
        false,
        spec.arguments.clone(),
        None,
        tx,
    );
    shared.quorum = true;
    let shared = Arc::new(shared);
    let mut args = QueueArgs::parse(&shared.arguments).unwrap_or_else(|bad| {
        tracing::warn!(queue = %spec.name, arg = bad.key, "ignoring invalid argument: {}", bad.why);
        QueueArgs::default()
    });
    // As RabbitMQ 3.10: a quorum queue takes reject-publish-dlx as drop-head.
    if args.limits.overflow == Overflow::RejectPublish && rejects_dlx(&spec.arguments) {
        args.limits.overflow = Overflow::DropHead;
    }
    let cfg = state::Config {
        name: spec.name.clone(),
        vhost: spec.vhost.clone(),
        durable: true,
        auto_delete: false,
        args,
        memory_budget: spec.memory_budget,
        delivery_limit: delivery_limit(&spec.arguments),
        // RabbitMQ's quorum queues requeue to the tail unless a delivery limit is set.
        requeue_to_tail: true,
    };
    let now = Meta {
        now_ms: clock::now_ms(),
    };
    let mut runtime = spec.runtime;
    let (me, placement) = (spec.me, spec.placement);
    let (handle, on_deleted, memory) = (shared.clone(), spec.on_deleted, spec.memory);
    let remote = spec.remote;
    tokio::spawn(async move {
        let mut inbox = rx;
        // Commands that come before the runtime (the node applies its metadata log as it
        // starts) wait for the replica; a stop ends it before it opens its group: a replica
        // of a placement replaced since must never take part under its old Raft id.
        let mut early = Vec::new();
        let later = runtime.clone();
        let rt = loop {
            tokio::select! {
                r = runtime.wait_for(Option::is_some) => match r {
                    Ok(r) => break r.clone(),
                    Err(_) => return,
                },
                cmd = inbox.recv() => match cmd {
                    None | Some(QueueCmd::Stop) => return,
                    Some(QueueCmd::Leave(members)) => {
                        drop_log_later(later, placement.group);
                        let Some(fwd) = remote else { return };
                        let vhost = cfg.vhost.to_string();
                        let t = TakeOver { shared: handle, vhost, members, fwd, consumers: Vec::new(), channels: Vec::new(), again: early };
                        return remote::take_over(t, inbox);
                    }
                    Some(cmd) => early.push(cmd),
                },
            }
        };
        let Some(rt) = rt else { return };
        let loader = loader::Loader::start(rt.cluster.clone(), placement.group);
        let replica = Replica {
            shared: handle,
            me,
            raft: placement.raft_id_of(me).unwrap_or(raft_id(me)),
            group: placement.group,
            cluster: rt.cluster,
            state: QueueState::new(cfg, now),
            applied: 0,
            applied_reqs: Applied::new(REMEMBERED),
            next_req: rand::random::<u64>() >> 1 | 1,
            pending: BTreeMap::new(),
            consumers: HashMap::new(),
            credited: HashMap::new(),
            reads: Vec::new(),
            on_deleted,
            done: false,
            ticked: None,
            progress: Instant::now(),
            newest_applied: None,
            memory,
            pending_bytes: 0,
            counted: 0,
            run: rand::random(),
            enqueued: 0,
            enqueues: HashMap::new(),
            relays: HashMap::new(),
            snapshots: Default::default(),
            loader,
            remote,
        };
        replica.run((inbox, early), placement).await;
    });
    shared
}

/// x-delivery-limit (checked positive at declare).
fn delivery_limit(arguments: &FieldTable) -> Option<u32> {
    let n = args::integer(arguments.inner().get("x-delivery-limit")?)?;
    u32::try_from(n).ok().filter(|n| *n > 0)
}

fn rejects_dlx(arguments: &FieldTable) -> bool {
    matches!(
        arguments.inner().get("x-overflow"),
        Some(crate::protocol::AMQPValue::LongString(s)) if s.as_bytes() == b"reject-publish-dlx"
    )
}

/// A declare-ok count waiting: (read index, last request before it, reply).
type Read = (u64, u64, oneshot::Sender<Stat>);

/// What waits for a proposal of this node to be applied.
enum Waiter {
    Publish(Option<Receipt>),
    Consume(ConsumerId, oneshot::Sender<Result<(), Error>>),
    Cancel(oneshot::Sender<()>),
    Get(oneshot::Sender<GetReply>),
    Purge(oneshot::Sender<u32>),
    Delete(oneshot::Sender<Result<u32, Error>>),
    Nothing,
}

struct Pending {
    data: Vec<u8>,
    /// A publish's sequence in this replica's run.
    enqueued: Option<u64>,
    waiter: Waiter,
    proposed: Instant,
    deadline: Instant,
}

struct Replica {
    shared: QueueHandle,
    me: NodeId,
    /// This replica's Raft id in the group.
    raft: u64,
    group: u64,
    cluster: Arc<Cluster>,
    state: QueueState<QBody>,
    /// The index of the last entry applied.
    applied: u64,
    applied_reqs: Applied,
    next_req: u64,
    /// By request number: proposed again in that order, so a publisher's order holds.
    pending: BTreeMap<u64, Pending>,
    /// Consumers whose deliveries this node hands out: their connection is here, or on a
    /// non-member that uses the queue through this node (then `events` relays them).
    /// Deliveries are counted in their channel's pool (released on ack), so that a global
    /// prefetch set later on the channel starts from the truth.
    consumers: HashMap<ConsumerId, ConsumerSpec>,
    /// The no-ack ones among them, whose credit this node logs.
    credited: HashMap<ConsumerId, credit::Credited>,
    /// Declare-ok counts waiting for this replica to reach a read index, and for this
    /// node's proposals made before them (up to a request number) to apply.
    reads: Vec<Read>,
    on_deleted: OnDeleted,
    done: bool,
    /// When this node last proposed a tick not applied yet (one at a time).
    ticked: Option<Instant>,
    /// When a proposal of this node last applied (or the leader changed): while they
    /// apply, the ones still waiting are slow, not lost, and are not proposed again.
    progress: Instant,
    /// The latest time a proposal of this node seen applied had been proposed: one
    /// proposed before it and still waiting was lost on the way.
    newest_applied: Option<Instant>,
    memory: Arc<MemoryMonitor>,
    /// The encoded proposals in `pending`: counted in `memory` with the state.
    pending_bytes: usize,
    /// What was last counted in `memory` (the state's weight and `pending_bytes`).
    counted: usize,
    /// This replica's run (random per start) and the number of its last publish.
    run: u64,
    enqueued: u64,
    /// Replicated: the last publish applied of every (origin, run).
    enqueues: HashMap<(NodeId, u64), u64>,
    /// Replicated: channels of non-members' connections, by the member they are used
    /// through now (`apply::route`).
    relays: HashMap<ChannelId, NodeId>,
    snapshots: snapshot::Snapshots,
    /// Deliveries whose bodies are read back from the log go through it, in order.
    loader: loader::Loader,
    remote: Option<Arc<remote::Forwarder>>,
}

impl Replica {
    async fn run(
        mut self,
        (mut inbox, early): (mpsc::Receiver<QueueCmd>, Vec<QueueCmd>),
        placement: Quorum,
    ) {
        let (tx, mut committed) = mpsc::unbounded_channel();
        let voters = placement.raft_ids();
        let campaign = placement.members.first() == Some(&self.me);
        let to_replica = ToReplica {
            tx,
            memory: self.memory.clone(),
        };
        let opened = self
            .cluster
            .open_group(
                self.group,
                (self.raft, voters),
                campaign,
                Box::new(to_replica),
            )
            .await;
        let (mut leader, new) = match opened {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(queue = %self.shared.name, "cannot start the queue's raft group: {e}");
                return;
            }
        };
        let (reads_tx, mut reads_rx) = mpsc::unbounded_channel::<Read>();
        for cmd in early {
            self.command(cmd, &reads_tx).await;
        }
        let mut alarm = self.memory.subscribe();
        // The first member of a new group stands for election at once, but another may win
        // (its election timer ran out first, or a vote request came before a peer had the
        // group): it then asks for the lead once, so that leaders stay where placed.
        let mut claim = new && campaign && placement.members.len() > 1;
        let mut retry = tokio::time::interval(REPROPOSE);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Deleted (here or from the metadata) the group goes with its log; at a shutdown
        // (the inbox closes) the log stays for the restart.
        let mut gone = true;
        let mut left = None;
        let shared = self.shared.clone();
        while !self.done {
            let deadline = self.tick_at(*leader.borrow());
            tokio::select! {
                // Flow control: commands wait in the inbox (and their senders behind it)
                // while enough of what this node proposed waits to apply.
                cmd = inbox.recv(), if self.pending_bytes < self.cluster.config.pending_bytes => match cmd {
                    Some(QueueCmd::Stop) => break,
                    Some(QueueCmd::Leave(members)) => {
                        left = Some(members);
                        break;
                    }
                    None => {
                        gone = false;
                        break;
                    }
                    Some(cmd) => self.command(cmd, &reads_tx).await,
                },
                Some(first) = committed.recv() => {
                    self.take_from_raft(first);
                    while let Ok(next) = committed.try_recv() {
                        self.take_from_raft(next);
                    }
                    self.count_memory();
                    self.answer_reads();
                    self.maybe_snapshot();
                    self.grant_credit().await;
                }
                // A consumer's connection granted credit the state ran out of.
                () = shared.woken() => self.grant_credit().await,
                Some((index, after, reply)) = reads_rx.recv() => {
                    self.reads.push((index, after, reply));
                    self.answer_reads();
                }
                r = leader.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let now = *leader.borrow_and_update();
                    tracing::info!(queue = %self.shared.name, leader = now, "quorum queue leader");
                    if claim && now != 0 {
                        claim = false;
                        if now != self.raft {
                            self.cluster.transfer_leader(self.group, self.raft).await;
                        }
                    }
                    self.progress = Instant::now();
                    self.repropose(true).await;
                }
                // Only while proposals wait: a thousand idle queues would wake every second.
                _ = retry.tick(), if !self.pending.is_empty() => self.repropose(false).await,
                Ok(()) = alarm.changed() => {
                    if *alarm.borrow_and_update() {
                        self.maybe_snapshot();
                    }
                }
                _ = sleep_until(deadline) => {
                    let tick = self.entry(0, QOp::Tick);
                    self.ticked = Some(Instant::now());
                    self.propose(tick.encode()).await;
                }
            }
        }
        // Leaving, the replica goes on as a stub with its consumers.
        let left = left.zip(self.remote.clone());
        if left.is_none() {
            for (id, c) in self.consumers.drain() {
                let _ = c.events.send(ConnEvent::Cancelled(id));
            }
        }
        committed.close();
        while let Ok(m) = committed.try_recv() {
            self.memory.sub(m.bytes());
        }
        self.memory.sub(std::mem::take(&mut self.counted));
        if gone {
            self.cluster.close_group(self.group).await;
        }
        if let Some((members, fwd)) = left {
            self.hand_over(members, fwd, inbox);
        }
    }

    fn take_from_raft(&mut self, m: FromRaft) {
        self.memory.sub(m.bytes());
        match m {
            FromRaft::Committed(index, data) => self.apply(index, &data),
            FromRaft::Restore(index, data) => self.restore(index, &data),
            FromRaft::WantSnapshot => self.snapshots.want(),
        }
    }

    /// A proposal of this node, no longer waiting.
    fn take_pending(&mut self, req: u64) -> Option<Pending> {
        let p = self.pending.remove(&req)?;
        self.pending_bytes -= p.data.len();
        Some(p)
    }

    /// Count what the state holds now, and the proposals in flight, against the memory
    /// alarm.
    fn count_memory(&mut self) {
        let now = self.state.weight() + self.pending_bytes;
        match now.cmp(&self.counted) {
            std::cmp::Ordering::Greater => self.memory.add(now - self.counted),
            std::cmp::Ordering::Less => self.memory.sub(self.counted - now),
            std::cmp::Ordering::Equal => {}
        }
        self.counted = now;
    }

    /// When the leader must propose a tick (TTL or x-expires due); followers never do, and
    /// the leader waits for its last one to apply (or to be lost, after `REPROPOSE`).
    fn tick_at(&self, leader: u64) -> Option<Instant> {
        if leader != self.raft {
            return None;
        }
        let at = self.state.next_deadline_ms()?;
        let wait = at.saturating_sub(clock::now_ms());
        let due = Instant::now() + Duration::from_millis(wait);
        Some(match self.ticked {
            Some(t) => due.max(t + REPROPOSE),
            None => due,
        })
    }

    fn entry(&mut self, req: u64, op: QOp) -> QEntry {
        QEntry {
            origin: self.me,
            req,
            at_ms: clock::now_ms(),
            op,
        }
    }

    fn new_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Propose a command of this node, `waiter` answered once it is applied here.
    async fn propose_op(&mut self, op: QOp, waiter: Waiter) {
        let enqueued = match &op {
            QOp::Enqueue { seq, .. } | QOp::Commit { seq, .. } => Some(*seq),
            _ => None,
        };
        let req = self.new_req();
        let e = self.entry(req, op);
        let data = e.encode();
        let now = Instant::now();
        self.pending_bytes += data.len();
        self.pending.insert(
            req,
            Pending {
                data: data.clone(),
                enqueued,
                waiter,
                proposed: now,
                deadline: now + self.cluster.config.command_timeout,
            },
        );
        self.count_memory();
        self.propose(data).await;
    }

    async fn propose(&self, data: Vec<u8>) {
        // Not waited for: a proposal refused (no leader known) or lost is proposed again on
        // the next leader change or after `REPROPOSE`; its waiter hears of the apply.
        self.cluster.propose_in_flight(self.group, data).await;
    }

    /// Propose again what was not applied: everything after a leader change; else what was
    /// lost (a later proposal applied) or, once none has applied for `REPROPOSE`, what has
    /// waited that long. Proposing again what is only slow (a disk busy with large
    /// messages) would add its bytes to the load that makes it slow. What has waited past
    /// the command timeout fails.
    async fn repropose(&mut self, all: bool) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        let mut gap = None;
        for req in expired {
            if let Some(p) = self.take_pending(req) {
                if let Some(seq) = p.enqueued {
                    gap = Some(gap.map_or(seq, |g: u64| g.min(seq)));
                }
                fail(p.waiter, self.cluster.config.command_timeout);
            }
        }
        if let Some(seq) = gap {
            self.new_run(seq);
        }
        self.count_memory();
        // From the oldest one that waited too long on, everything again, in order: what
        // followed a lost publish was skipped when it applied out of order.
        let idle = now - self.progress >= REPROPOSE;
        let stale = self
            .pending
            .iter()
            .find(|(_, p)| {
                let lost = Some(p.proposed) < self.newest_applied;
                all || lost || (idle && now - p.proposed >= REPROPOSE)
            })
            .map(|(r, _)| *r);
        let again: Vec<Vec<u8>> = match stale {
            None => Vec::new(),
            Some(from) => self
                .pending
                .range_mut(from..)
                .map(|(_, p)| {
                    p.proposed = now;
                    p.data.clone()
                })
                .collect(),
        };
        for data in again {
            self.propose(data).await;
        }
    }

    /// A publish of this run (number `seq`) failed and may never apply: every later one
    /// would wait behind the gap for good (publishes apply in order), so they fail too
    /// (nacked: they may still land if the failed one does), and publishing goes on in a
    /// new run.
    fn new_run(&mut self, seq: u64) {
        let later: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.enqueued.is_some_and(|s| s > seq))
            .map(|(r, _)| *r)
            .collect();
        for req in later {
            if let Some(p) = self.take_pending(req) {
                fail(p.waiter, self.cluster.config.command_timeout);
            }
        }
        self.run = rand::random();
        self.enqueued = 0;
    }
}

/// A replica that left its group before it opened it (its node learnt of the change while
/// replaying the metadata log at a start): the group's log from before goes once the
/// runtime is up, unless the group runs here by then (the node was added back).
fn drop_log_later(mut runtime: watch::Receiver<Option<Runtime>>, group: u64) {
    tokio::spawn(async move {
        let rt = match runtime.wait_for(Option::is_some).await {
            Ok(rt) => rt.clone(),
            Err(_) => return,
        };
        if let Some(rt) = rt {
            rt.cluster.drop_unopened(group).await;
        }
    });
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
