//! The raft node: the `raft` crate's `RawNode`, owned by one dedicated thread
//! that ticks, steps, proposes and handles each `Ready` in the documented
//! order. Only this module touches the `raft` crate's types; the rest of the
//! server sees proposals, committed entries and read barriers.

mod apply_thread;
mod driver;
mod log_store;
mod logger;
mod reads;
mod recovery;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::prelude::{ConfChange, ConfChangeType, Message};
use tokio::sync::{oneshot, watch};

pub use driver::start;

use crate::error::EtcdError;

/// raft's `max_size_per_msg`: its default of 0 would send one entry per append.
const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// raft's `max_inflight_msgs` (etcd's value).
const MAX_INFLIGHT_MSGS: usize = 512;

#[derive(Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// The founding members of a brand-new cluster, with the context of
    /// the conf change that adds each (ignored on restart; empty for a
    /// member joining an existing cluster).
    pub initial_members: Vec<(u64, Vec<u8>)>,
    /// `--force-new-cluster`: on restart, commit the removal of every other
    /// member, so that this one leads alone with its data.
    pub force_new_cluster: bool,
    pub tick: Duration,
    pub election_ticks: usize,
    pub snapshot_count: u64,
    /// Entries kept in memory behind a snapshot, so that slow followers can
    /// catch up without one (`--snapshot-catchup-entries`).
    pub catch_up_entries: u64,
    pub wal_dir: PathBuf,
    pub snap_dir: PathBuf,
    /// Told how long each WAL fdatasync took (for metrics).
    pub on_fsync: Arc<dyn Fn(Duration) + Send + Sync>,
    /// Where messages for other members go.
    pub outbound: Arc<dyn Outbound>,
}

/// The peer transport as the node sees it. Messages travel encoded, so
/// nothing outside this module handles raft's types.
pub trait Outbound: Send + Sync + 'static {
    /// Sends an encoded raft message to member `to`, never blocking: at
    /// once as far as the socket takes it if `now`, else by the peer's
    /// task. False when it cannot go (the peer is cut off or too much waits
    /// for it): raft is told the peer is unreachable and sends again later.
    fn send(&self, to: u64, msg: Vec<u8>, now: bool) -> bool;
    /// Sends a raft snapshot message (the backend's image travels with it)
    /// to `to`, reporting the outcome later through `Node::report_snapshot`.
    fn send_snapshot(&self, to: u64, msg: Vec<u8>);
    /// Whether messages to `to` can go now (its link is up).
    fn reachable(&self, to: u64) -> bool;
}

/// No peers (a node tested alone): every message is dropped.
pub struct NoPeers;

impl Outbound for NoPeers {
    fn send(&self, _to: u64, _msg: Vec<u8>, _now: bool) -> bool {
        false
    }
    fn send_snapshot(&self, _to: u64, _msg: Vec<u8>) {}
    fn reachable(&self, _to: u64) -> bool {
        false
    }
}

/// A membership change, as a raft conf change carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    AddVoter,
    AddLearner,
    Remove,
}

impl From<ConfChangeType> for MemberChange {
    fn from(kind: ConfChangeType) -> MemberChange {
        match kind {
            ConfChangeType::AddNode => MemberChange::AddVoter,
            ConfChangeType::AddLearnerNode => MemberChange::AddLearner,
            ConfChangeType::RemoveNode => MemberChange::Remove,
        }
    }
}

/// The raft conf change that makes `change` to member `node_id`.
fn conf_change(change: MemberChange, node_id: u64, context: Vec<u8>) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(match change {
        MemberChange::AddVoter => ConfChangeType::AddNode,
        MemberChange::AddLearner => ConfChangeType::AddLearnerNode,
        MemberChange::Remove => ConfChangeType::RemoveNode,
    });
    cc.node_id = node_id;
    cc.context = context.into();
    cc
}

/// Member IDs as etcd prints them, for logs.
fn ids_hex(ids: &[u64]) -> Vec<String> {
    ids.iter().map(|id| format!("{id:x}")).collect()
}

/// A committed conf change: which member, how, and the context its
/// proposer attached (ferrocd's member record).
#[derive(Debug, Clone, Copy)]
pub struct ConfChangeEntry<'a> {
    pub change: MemberChange,
    pub node_id: u64,
    pub context: &'a [u8],
    /// False when raft refused it (it then changed nothing).
    pub accepted: bool,
}

/// Voters and learners, as the backend keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Voters {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// How far a peer's log matches the leader's, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    pub matched: u64,
    pub is_learner: bool,
    /// Heard from within the last election timeout.
    pub recent_active: bool,
}

/// One committed log entry, handed to the state machine in log order.
#[derive(Debug, Clone, Copy)]
pub struct CommittedEntry<'a> {
    pub index: u64,
    pub term: u64,
    /// The proposal's bytes; empty for the entry a new leader appends and
    /// for conf changes.
    pub data: &'a [u8],
    pub conf_change: Option<ConfChangeEntry<'a>>,
}

/// What the node drives: the server's applier.
pub trait StateMachine: Send + 'static {
    /// Applies committed entries in order. Entries at or below the applied
    /// index (replayed after a restart) must change nothing.
    fn apply(&mut self, entries: &[CommittedEntry<'_>]) -> Result<(), EtcdError>;
    /// Work driven by time and size rather than by entries, such as writing
    /// out what was applied in memory. The apply thread calls it after each
    /// batch it applies and whenever no entries came for `IDLE_TICK`; never
    /// on the raft thread, so that the next fsync does not wait for it.
    fn background(&mut self) -> Result<(), EtcdError> {
        Ok(())
    }
    /// Whether `background` has work due now (entries applied in place on
    /// the raft thread then wake the apply thread for it).
    fn background_due(&self) -> bool {
        false
    }
    /// The last applied index that is (or will be, after `sync`) durable.
    fn applied_index(&self) -> u64;
    /// The membership at `applied_index`, when the backend holds one (it is
    /// stored with the applied index, so a restart resumes from it).
    fn voters(&self) -> Option<Voters>;
    /// Makes everything applied so far durable; called before a snapshot lets
    /// the WAL be purged.
    fn sync(&mut self) -> Result<(), EtcdError>;
    /// Replaces the whole state with a leader's snapshot image (the file
    /// at `image`, checked); returns the index the image had applied.
    fn restore(&mut self, image: &std::path::Path) -> Result<u64, EtcdError>;
    /// A proposal never entered the log (no leader, or raft refused it).
    fn proposal_dropped(&mut self, id: u64, err: EtcdError);
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error(transparent)]
    Snap(#[from] crate::snap::SnapError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("state machine: {0}")]
    StateMachine(EtcdError),
    #[error(
        "the backend is damaged: it has applied index {backend} but the newest snapshot is at {snapshot}, so it \
         lost data the WAL no longer holds (sled drops what follows damage in its log). Restore this member's \
         data dir from a snapshot (ferrocdutl snapshot restore), or, in a cluster, remove this member and add it \
         back with an empty data dir; `ferrocdutl check --data-dir DIR` lists what is damaged"
    )]
    BackendBehindSnapshot { backend: u64, snapshot: u64 },
    #[error(
        "the wal in {dir} ends at index {wal_end} but the backend has applied up to {backend} and the newest \
         snapshot is at {snapshot}: the log lost entries this member already applied, and serving from it \
         would reuse their indexes. Restore this member's data dir from a snapshot (ferrocdutl snapshot \
         restore), or, in a cluster, remove this member and add it back with an empty data dir"
    )]
    WalBehind { dir: PathBuf, wal_end: u64, backend: u64, snapshot: u64 },
    #[error("cannot start the raft thread: {0}")]
    Thread(std::io::Error),
    #[error("raft asked to install a snapshot at index {0} but no image for it arrived")]
    SnapshotImageMissing(u64),
}

/// Live numbers the node publishes for Status, headers and metrics.
#[derive(Debug)]
pub struct NodeStatus {
    pub leader: AtomicU64,
    /// The same leader, for tasks that react to leadership changes.
    leader_watch: watch::Sender<u64>,
    /// A conf change removed this member from the cluster.
    pub removed: AtomicBool,
    pub term: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub stopped: AtomicBool,
    /// WAL fdatasyncs of write batches (group commits) since start.
    pub wal_syncs: AtomicU64,
    /// Times the known leader changed to another member (or this one).
    pub leader_changes: AtomicU64,
    /// This member leads a configuration whose only voter it is, and has
    /// applied everything another member could have shown a client (see
    /// `Driver::publish_sole_leader`): a read barrier then has nothing to wait for.
    pub sole_leader: AtomicBool,
}

impl Default for NodeStatus {
    fn default() -> NodeStatus {
        NodeStatus {
            leader: AtomicU64::new(0),
            leader_watch: watch::Sender::new(0),
            removed: AtomicBool::new(false),
            term: AtomicU64::new(0),
            commit_index: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            wal_syncs: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            sole_leader: AtomicBool::new(false),
        }
    }
}

impl NodeStatus {
    /// Follows the leader's ID (0: none known), told once per change.
    pub fn watch_leader(&self) -> watch::Receiver<u64> {
        self.leader_watch.subscribe()
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    pub fn commit_index(&self) -> u64 {
        self.commit_index.load(Ordering::Acquire)
    }
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }
    pub fn wal_syncs(&self) -> u64 {
        self.wal_syncs.load(Ordering::Acquire)
    }
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Acquire)
    }
    fn set_leader(&self, leader: u64) {
        let before = self.leader.swap(leader, Ordering::AcqRel);
        if leader != 0 && leader != before {
            self.leader_changes.fetch_add(1, Ordering::AcqRel);
        }
        self.leader_watch.send_if_modified(|known| std::mem::replace(known, leader) != leader);
    }
    /// The node thread ended: read barriers no longer pass at once.
    fn mark_stopped(&self) {
        self.sole_leader.store(false, Ordering::Release);
        self.stopped.store(true, Ordering::Release);
    }
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

enum NodeMsg {
    Propose {
        id: u64,
        data: Vec<u8>,
    },
    /// A batch of messages from a peer, in the order it sent them.
    Step(Vec<Message>),
    ConfChange {
        id: u64,
        change: MemberChange,
        node_id: u64,
        context: Vec<u8>,
    },
    TransferLeader(u64),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
    /// A snapshot message from a peer, with the image that came with it.
    StepSnapshot(Message, PathBuf),
    Progress(oneshot::Sender<Option<Vec<PeerProgress>>>),
    /// Read barriers wait in the intake (`reads::ReadIntake`).
    ReadsWaiting,
    /// Waits for apply to reach the commit index known now.
    ApplyWait(oneshot::Sender<Result<(), EtcdError>>),
    Stop(oneshot::Sender<()>),
    /// From the apply thread: everything up to this index is applied.
    Applied(u64),
    /// From the apply thread: the backend refused a batch; the node stops.
    ApplyFailed(EtcdError),
}

/// A raft message as a peer sent it.
fn decode_message(bytes: &[u8]) -> Result<Message, EtcdError> {
    use protobuf::Message as _;
    Message::parse_from_bytes(bytes)
        .map_err(|e| EtcdError::Internal(format!("undecodable raft message from a peer: {e}")))
}

/// The handle the rest of the server uses to reach the node thread.
#[derive(Clone)]
pub struct Node {
    tx: std::sync::mpsc::Sender<NodeMsg>,
    reads: Arc<reads::ReadIntake>,
    status: Arc<NodeStatus>,
    /// Counts the handles: the node thread stops once none is left (the
    /// apply thread's sender keeps the channel itself open).
    _alive: Arc<()>,
}

impl Node {
    pub fn status(&self) -> &Arc<NodeStatus> {
        &self.status
    }

    /// Hands a proposal to raft. Its outcome arrives through the state
    /// machine: applied, or `proposal_dropped`.
    pub fn propose(&self, id: u64, data: Vec<u8>) -> Result<(), EtcdError> {
        self.tx.send(NodeMsg::Propose { id, data }).map_err(|_| EtcdError::Stopped)
    }

    /// Steps a batch of encoded raft messages from a peer: all of them, in
    /// order, or none if one cannot be decoded. One hand-over for the batch
    /// wakes the raft thread at most once.
    pub fn step<M: AsRef<[u8]>>(&self, batch: &[M]) -> Result<(), EtcdError> {
        // Keepalives come as empty batches: nothing to wake the thread for.
        if batch.is_empty() {
            return Ok(());
        }
        let messages = batch.iter().map(|m| decode_message(m.as_ref())).collect::<Result<_, _>>()?;
        self.tx.send(NodeMsg::Step(messages)).map_err(|_| EtcdError::Stopped)
    }

    /// Proposes a membership change; its outcome arrives through the state
    /// machine (the conf change applied, refused, or `proposal_dropped`).
    pub fn propose_conf_change(
        &self,
        id: u64,
        change: MemberChange,
        node_id: u64,
        context: Vec<u8>,
    ) -> Result<(), EtcdError> {
        self.tx.send(NodeMsg::ConfChange { id, change, node_id, context }).map_err(|_| EtcdError::Stopped)
    }

    /// Asks raft to hand leadership to `to` (a leader only; raft ignores it
    /// elsewhere). Watch `NodeStatus::watch_leader` for the outcome.
    pub fn transfer_leader(&self, to: u64) -> Result<(), EtcdError> {
        self.tx.send(NodeMsg::TransferLeader(to)).map_err(|_| EtcdError::Stopped)
    }

    /// The transport lost its connection to `id`.
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.tx.send(NodeMsg::Unreachable(id));
    }

    /// Peers refuse this member as removed from the cluster (it missed its
    /// own removal): it stops, as etcd's does.
    pub fn removed_from_cluster(&self) {
        if !self.status.removed.swap(true, Ordering::AcqRel) {
            tracing::warn!("peers refuse this member: it was removed from the cluster");
        }
    }

    /// How sending a snapshot to `id` ended.
    pub fn report_snapshot(&self, id: u64, delivered: bool) {
        let _ = self.tx.send(NodeMsg::SnapshotStatus(id, delivered));
    }

    /// Steps a snapshot message from a peer whose image is at `image`
    /// (the node removes the file once done with it).
    pub fn step_snapshot(&self, msg: &[u8], image: PathBuf) -> Result<(), EtcdError> {
        self.tx.send(NodeMsg::StepSnapshot(decode_message(msg)?, image)).map_err(|_| EtcdError::Stopped)
    }

    /// The leader's view of every member's log (None on a follower).
    pub async fn progress(&self) -> Result<Option<Vec<PeerProgress>>, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::Progress(tx)).map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)
    }

    /// Waits until this member has applied everything committed before the
    /// call (raft's ReadIndex): a linearizable read may then read locally.
    /// A sole voter that leads passes at once: nobody else can commit, and
    /// what it committed but not yet applied no client has seen (writes are
    /// answered after they apply), so its applied state already holds every
    /// write a read must see.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        if self.status.sole_leader.load(Ordering::Acquire) {
            return Ok(());
        }
        self.read_index().await
    }

    /// A read barrier through raft's ReadIndex even on a lone leader: its
    /// answer also shows that the raft thread turns (a stuck fsync stops it).
    pub async fn read_index(&self) -> Result<(), EtcdError> {
        let (tx, rx) = oneshot::channel();
        if self.reads.push(tx) {
            self.tx.send(NodeMsg::ReadsWaiting).map_err(|_| EtcdError::Stopped)?;
        }
        rx.await.map_err(|_| EtcdError::Stopped)?
    }

    /// Waits until this member has applied everything it knows committed
    /// (etcd's `ApplyWait`), without a round through the other members: a
    /// leader answering from state that apply keeps (its lessor) first sees
    /// every entry a follower may have applied and acknowledged already.
    pub async fn apply_wait(&self) -> Result<(), EtcdError> {
        // The raft thread publishes the commit index before sending what
        // carries it, and the applied index after applying: caught up here
        // means caught up with anything a peer can have acknowledged.
        if self.status.applied_index() >= self.status.commit_index() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::ApplyWait(tx)).map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }

    /// Stops the node thread after it has made applied state durable.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(NodeMsg::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
