//! The node thread. Each loop turn takes every queued message (so many
//! concurrent client writes become one `Ready` and one fsync: group commit),
//! ticks on time, then handles `Ready` in raft-rs's documented order.
//! Committed entries go to the apply thread, which reports back how far it
//! got; read barriers and snapshots follow that progress.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::*;
use raft::StateRole;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;

use super::apply_thread::{ApplyThread, ToApply};
use super::log_store::LogStore;
use super::logger::raft_logger;
use super::reads::{PeerAnswer, ReadIntake, ReadQueue};
use super::recovery::{self, Recovered};
use super::{
    ids_hex, MemberChange, Node, NodeConfig, NodeError, NodeMsg, NodeStatus, PeerProgress, StateMachine,
    MAX_INFLIGHT_MSGS, MAX_SIZE_PER_MSG,
};
use crate::error::EtcdError;
use crate::snap::Snapshotter;
use crate::wal::Wal;

mod conf;
mod persist;
mod roles;
mod snapshots;
mod succession;

/// Most queued hand-overs taken in one turn (a peer's batch is one), so
/// ticks are never starved.
const MAX_BATCH: usize = 4096;

/// Opens (or creates) the log, restores raft's state and starts the thread.
pub fn start<S: StateMachine>(cfg: NodeConfig, sm: S) -> Result<(Node, JoinHandle<Result<(), NodeError>>), NodeError> {
    let snapshotter = Snapshotter::new(&cfg.snap_dir)?;
    let Recovered { log, wal, applied, snapshot_index: last_snap } = recovery::open(&cfg, &snapshotter, &sm)?;
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_inflight_msgs: MAX_INFLIGHT_MSGS,
        pre_vote: true,
        check_quorum: true,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let raw = RawNode::new(&raft_cfg, log.clone(), &raft_logger())?;
    // A lone voter need not wait out an election timeout to lead (raft
    // lets it campaign once the log's conf changes are applied).
    let campaign_pending = log.conf_state().voters == [cfg.id];
    tracing::info!(member = format!("{:x}", cfg.id), voters = ?ids_hex(&log.conf_state().voters),
        learners = ?ids_hex(&log.conf_state().learners), "raft node starting");
    let (tx, rx) = std::sync::mpsc::channel();
    let status = Arc::new(NodeStatus::default());
    status.applied_index.store(applied, Ordering::Release);
    let applier = ApplyThread::start(sm, tx.clone())?;
    let alive = Arc::new(());
    let reads = Arc::new(ReadIntake::default());
    let persisted_commit = raw.raft.raft_log.committed;
    let driver = Driver {
        raw,
        log,
        wal,
        snapshotter,
        applier,
        rx,
        handles: Arc::downgrade(&alive),
        status: status.clone(),
        tick: cfg.tick,
        on_fsync: cfg.on_fsync.clone(),
        outbound: cfg.outbound.clone(),
        snapshot_count: cfg.snapshot_count,
        catch_up_entries: cfg.catch_up_entries,
        last_snap: last_snap.max(applied),
        applied,
        reads: ReadQueue::new(cfg.id, reads.clone()),
        persisted_commit,
        campaign_pending,
        took_over_from: (0, 0),
        incoming: None,
        sole_from: 0,
        sole_term: 0,
    };
    let handle =
        std::thread::Builder::new().name("raft".into()).spawn(move || driver.run()).map_err(NodeError::Thread)?;
    Ok((Node { tx, reads, status, _alive: alive }, handle))
}

struct Driver<S: StateMachine> {
    raw: RawNode<LogStore>,
    log: LogStore,
    wal: Wal,
    snapshotter: Snapshotter,
    applier: ApplyThread<S>,
    /// Gone when every `Node` handle is.
    handles: std::sync::Weak<()>,
    rx: Receiver<NodeMsg>,
    status: Arc<NodeStatus>,
    tick: Duration,
    on_fsync: Arc<dyn Fn(Duration) + Send + Sync>,
    outbound: Arc<dyn super::Outbound>,
    snapshot_count: u64,
    catch_up_entries: u64,
    last_snap: u64,
    applied: u64,
    reads: ReadQueue,
    /// The commit index the WAL's last hard state holds.
    persisted_commit: u64,
    /// A lone voter campaigns as soon as raft lets it.
    campaign_pending: bool,
    /// The term and leader this member last took over from (`succession`).
    took_over_from: (u64, u64),
    /// The image of the snapshot a leader sent last (index, file).
    incoming: Option<(u64, std::path::PathBuf)>,
    /// Read barriers pass at once (`NodeStatus::sole_leader`) only once
    /// apply reaches this index: the log's end when this member last became
    /// leader or applied a conf change, everything other members may know of.
    sole_from: u64,
    /// The term `sole_from` was last raised for becoming leader in.
    sole_term: u64,
}

enum Turn {
    Continue,
    Stop(oneshot::Sender<()>),
    Failed(EtcdError),
}

impl<S: StateMachine> Driver<S> {
    fn run(mut self) -> Result<(), NodeError> {
        // Marks the node stopped however the loop ends, a panic included.
        struct Stopped(Arc<NodeStatus>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                self.0.mark_stopped();
            }
        }
        let _stopped = Stopped(self.status.clone());
        let result = self.run_loop();
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft node failed; stopping");
        }
        result
    }

    fn run_loop(&mut self) -> Result<(), NodeError> {
        let mut applied_before = self.applied;
        // A new log's conf changes apply here (in place, being few), so that
        // a lone voter leads before it takes its first message.
        self.on_ready()?;
        self.advance_apply();
        self.campaign_if_alone()?;
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut stop = None;
            match self.rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut next = Some(first);
                    let mut taken = 0;
                    while let Some(msg) = next.take() {
                        match self.handle(msg) {
                            Turn::Continue => {}
                            Turn::Stop(done) => stop = Some(done),
                            Turn::Failed(e) => return Err(NodeError::StateMachine(e)),
                        }
                        taken += 1;
                        if taken <= MAX_BATCH {
                            next = self.rx.try_recv().ok();
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.shutdown(None),
            }
            if stop.is_some() {
                return self.shutdown(stop);
            }
            let now = Instant::now();
            if now >= next_tick {
                if self.handles.strong_count() == 0 {
                    return self.shutdown(None);
                }
                self.raw.tick();
                self.campaign_if_leader_lost()?;
                next_tick = now + self.tick;
                for ctx in self.reads.retry(now) {
                    self.raw.read_index(ctx);
                }
            }
            // All barriers that arrived since the last round share the next
            // one; a round confirmed in this Ready lets the next go at once.
            for _ in 0..2 {
                let leading = self.raw.raft.state == StateRole::Leader;
                if let Some(ctx) = self.reads.ask_new(Instant::now(), leading) {
                    self.raw.read_index(ctx);
                }
                self.on_ready()?;
            }
            // Applied entries reported by the apply thread or applied in place.
            if self.applied > applied_before {
                self.advance_apply();
                self.campaign_if_alone()?;
                self.reads.answer(self.applied);
                self.publish_status();
                self.maybe_snapshot()?;
                applied_before = self.applied;
            }
        }
    }

    /// Steps one message from a peer.
    fn step(&mut self, mut m: Message) {
        // A follower's ReadIndex joins this leader's next round.
        if m.get_msg_type() == MessageType::MsgReadIndex
            && self.raw.raft.state == StateRole::Leader
            && m.entries.len() == 1
        {
            let ctx = Vec::<u8>::from(m.take_entries()[0].take_data());
            self.reads.push_peer(m.from, ctx);
            return;
        }
        // Messages from members raft does not know (removed ones, or before
        // a conf change applied) are refused by raft itself.
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(error = %e, "raft refused a peer's message");
        }
    }

    fn handle(&mut self, msg: NodeMsg) -> Turn {
        match msg {
            NodeMsg::Propose { id, data } => {
                // A follower whose link to the leader is down would forward
                // the proposal into it, raft would drop it silently and the
                // client wait out its timeout: it fails now instead, as raft
                // fails a proposal with no leader, and the client retries.
                let r = &self.raw.raft;
                if r.state != StateRole::Leader
                    && r.leader_id != raft::INVALID_ID
                    && !self.outbound.reachable(r.leader_id)
                {
                    self.applier.dropped(id, EtcdError::NoLeader);
                } else if let Err(e) = self.raw.propose(Vec::new(), data) {
                    let err = self.dropped_error(e);
                    self.applier.dropped(id, err);
                }
            }
            NodeMsg::Step(batch) => batch.into_iter().for_each(|m| self.step(m)),
            NodeMsg::ConfChange { id, change, node_id, context } => {
                self.propose_conf_change(id, change, node_id, context)
            }
            NodeMsg::TransferLeader(to) => self.raw.transfer_leader(to),
            NodeMsg::Unreachable(id) => self.raw.report_unreachable(id),
            NodeMsg::SnapshotStatus(id, delivered) => {
                let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.raw.report_snapshot(id, status);
            }
            NodeMsg::StepSnapshot(m, image) => {
                let index = m.get_snapshot().get_metadata().index;
                // Only the newest image is kept: raft installs at most one.
                if let Some((_, older)) = self.incoming.replace((index, image.clone())) {
                    let _ = std::fs::remove_file(older);
                }
                if let Err(e) = self.raw.step(m) {
                    tracing::warn!(error = %e, "raft refused a snapshot");
                    self.incoming = None;
                    let _ = std::fs::remove_file(image);
                }
            }
            NodeMsg::Progress(reply) => {
                let r = &self.raw.raft;
                let progress = (r.state == StateRole::Leader).then(|| {
                    let learners = r.prs().conf().learners();
                    r.prs()
                        .iter()
                        .map(|(id, p)| PeerProgress {
                            id: *id,
                            matched: p.matched,
                            is_learner: learners.contains(id),
                            recent_active: p.recent_active || *id == r.id,
                        })
                        .collect()
                });
                let _ = reply.send(progress);
            }
            // Taken from the intake when the next round is asked.
            NodeMsg::ReadsWaiting => {}
            NodeMsg::ApplyWait(waiter) => {
                self.reads.wait_applied(self.raw.raft.raft_log.committed, self.applied, waiter)
            }
            NodeMsg::Stop(done) => return Turn::Stop(done),
            NodeMsg::Applied(index) => self.applied = self.applied.max(index),
            NodeMsg::ApplyFailed(e) => return Turn::Failed(e),
        }
        Turn::Continue
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            let leader =
                if ss.raft_state == StateRole::Leader || ss.leader_id != raft::INVALID_ID { ss.leader_id } else { 0 };
            self.leader_is(leader);
        }
        // 1. A leader's appends may leave before its own fsync.
        self.send(rd.take_messages());
        // 2. A snapshot from the leader replaces the state machine's state.
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        // 3. Entries committed in an earlier turn are durable: apply them
        //    (on the apply thread, while this one persists the next ones).
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        // 4. Persist new entries and hard state: one write, one fdatasync.
        self.persist(rd.entries(), rd.hs().cloned(), rd.must_sync())?;
        // 5. Votes and append responses only once persisted.
        self.send(rd.take_persisted_messages());
        for rs in rd.take_read_states() {
            let answers = self.reads.confirmed(&rs.request_ctx, rs.index);
            self.answer_peers(answers);
        }
        // 6. Advance; the light ready carries what the persist just committed.
        //    Apply progress comes back from the apply thread (`Applied`).
        let mut light = self.raw.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        // Barriers confirmed at an index already applied are answered now.
        self.reads.answer(self.applied);
        self.publish_status();
        Ok(())
    }

    /// Conf changes take effect in raft here; every entry, conf changes
    /// included, then goes to the state machine, which stores the
    /// membership with the applied index.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            let data = Vec::<u8>::from(std::mem::take(&mut e.data));
            let (data, conf_change) = match e.get_entry_type() {
                EntryType::EntryNormal => (data, None),
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&data)
                        .map_err(|err| NodeError::Raft(raft::Error::CodecError(err)))?;
                    let change = MemberChange::from(cc.get_change_type());
                    let accepted = match self.raw.apply_conf_change(&cc) {
                        Ok(cs) => {
                            self.conf_changed(cs, change, cc.node_id);
                            true
                        }
                        Err(err) => {
                            tracing::warn!(index = e.index, %err, "raft refused a conf change");
                            false
                        }
                    };
                    (cc.context.into(), Some((change, cc.node_id, accepted)))
                }
                // Only ConfChange (v1) is proposed here; the entry still
                // counts as applied, with nothing in it.
                EntryType::EntryConfChangeV2 => {
                    tracing::error!(index = e.index, "skipping an unexpected joint conf change entry");
                    (Vec::new(), None)
                }
            };
            out.push(ToApply { index: e.index, term: e.term, data, conf_change });
        }
        if let Some(last) = self.applier.apply(out).map_err(NodeError::StateMachine)? {
            self.applied = self.applied.max(last);
        }
        Ok(())
    }

    /// Tells raft how far apply got: never past what it knows committed and
    /// persisted (an installed image may hold entries raft has yet to see).
    fn advance_apply(&mut self) {
        let log = &self.raw.raft.raft_log;
        let to = self.applied.min(log.committed).min(log.persisted);
        if to > self.raw.raft.raft_log.applied {
            self.raw.advance_apply_to(to);
        }
    }

    /// A lone voter campaigns once everything committed is applied (raft
    /// refuses to campaign over unapplied conf changes).
    fn campaign_if_alone(&mut self) -> Result<(), NodeError> {
        if self.campaign_pending && self.applied >= self.raw.raft.raft_log.committed {
            self.campaign_pending = false;
            self.raw.campaign()?;
            self.on_ready()?;
        }
        Ok(())
    }

    /// Followers' ReadIndex requests answered as raft answers them: the
    /// round's index with this leader's term (the follower may commit up
    /// to it, an entry of this term).
    fn answer_peers(&mut self, answers: Vec<PeerAnswer>) {
        if answers.is_empty() {
            return;
        }
        let (from, term) = (self.raw.raft.id, self.raw.raft.term);
        let msgs = answers
            .into_iter()
            .map(|a| {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgReadIndexResp);
                m.from = from;
                m.to = a.to;
                m.term = term;
                m.index = a.index;
                m.set_entries(vec![Entry { data: a.ctx.into(), ..Default::default() }].into());
                m
            })
            .collect();
        self.send(msgs);
    }

    /// Messages for peers, handed to the transport. One it cannot take
    /// now makes raft slow down its sends to that peer.
    fn send(&mut self, msgs: Vec<Message>) {
        // The commit index is published before any message that carries it
        // leaves: whatever a peer applies and acknowledges, `apply_wait`'s
        // shortcut on this member sees as committed.
        self.status.commit_index.store(self.raw.raft.raft_log.committed, Ordering::Release);
        for mut m in msgs {
            let to = m.to;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshot_as_of_now(&mut m);
                match m.write_to_bytes() {
                    Ok(bytes) => self.outbound.send_snapshot(to, bytes),
                    Err(_) => self.raw.report_snapshot(to, SnapshotStatus::Failure),
                }
                continue;
            }
            // The log's traffic (appends and their acknowledgements) is
            // written by the peer's task, batched across turns: one write
            // and one read for many, and no system calls on the raft thread
            // that carries every write. The rest (read rounds' heartbeats,
            // ReadIndex, elections) is small and seldom under writes, and
            // someone waits for it: written at once, no thread between.
            let now = !matches!(m.get_msg_type(), MessageType::MsgAppend | MessageType::MsgAppendResponse);
            let sent = match m.write_to_bytes() {
                Ok(bytes) => self.outbound.send(to, bytes, now),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a raft message");
                    false
                }
            };
            if !sent {
                self.raw.report_unreachable(to);
            }
        }
    }

    fn shutdown(&mut self, done: Option<oneshot::Sender<()>>) -> Result<(), NodeError> {
        let mut result = self.applier.stop().map_err(NodeError::StateMachine);
        if let Err(e) = self.persist_commit() {
            result = result.and(Err(e));
        }
        self.reads.stop();
        self.status.mark_stopped();
        tracing::info!(applied = self.applied, "raft node stopped");
        if let Some(done) = done {
            let _ = done.send(());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::raftnode::CommittedEntry;

    /// Records applied proposals, and the thread that applied each; shared
    /// with the test through an Arc.
    #[derive(Clone, Default)]
    struct Recorder {
        applied: Arc<Mutex<Vec<Vec<u8>>>>,
        threads: Arc<Mutex<Vec<String>>>,
        index: Arc<std::sync::atomic::AtomicU64>,
        /// Held by a test, it stops every apply.
        hold: Arc<Mutex<()>>,
        /// Applies begun (before `hold` stops them).
        entered: Arc<std::sync::atomic::AtomicUsize>,
        /// Held by a test, it stops the applies of batches with an entry
        /// `held` (after `entered` counts them).
        hold_marked: Arc<Mutex<()>>,
    }

    impl StateMachine for Recorder {
        fn apply(&mut self, entries: &[CommittedEntry<'_>]) -> Result<(), EtcdError> {
            self.entered.fetch_add(1, Ordering::AcqRel);
            drop(self.hold.lock().expect("lock"));
            if entries.iter().any(|e| e.data == b"held") {
                drop(self.hold_marked.lock().expect("lock"));
            }
            for e in entries {
                assert_ne!(e.data, b"panic", "told to panic");
                if !e.data.is_empty() {
                    self.applied.lock().expect("lock").push(e.data.to_vec());
                    let thread = std::thread::current().name().unwrap_or_default().to_string();
                    self.threads.lock().expect("lock").push(thread);
                }
                self.index.store(e.index, Ordering::Release);
            }
            Ok(())
        }
        fn applied_index(&self) -> u64 {
            self.index.load(Ordering::Acquire)
        }
        fn voters(&self) -> Option<crate::raftnode::Voters> {
            None
        }
        fn restore(&mut self, _image: &std::path::Path) -> Result<u64, EtcdError> {
            Err(EtcdError::Internal("a lone node gets no snapshots".into()))
        }
        fn sync(&mut self) -> Result<(), EtcdError> {
            Ok(())
        }
        fn proposal_dropped(&mut self, id: u64, err: EtcdError) {
            panic!("proposal {id} dropped: {err}");
        }
    }

    fn config(dir: &std::path::Path) -> NodeConfig {
        NodeConfig {
            id: 1,
            initial_members: vec![(1, Vec::new())],
            force_new_cluster: false,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            snapshot_count: 10_000,
            catch_up_entries: 5_000,
            wal_dir: dir.join("wal"),
            snap_dir: dir.join("snap"),
            on_fsync: Arc::new(|_| {}),
            outbound: Arc::new(crate::raftnode::NoPeers),
        }
    }

    #[test]
    fn dropping_every_handle_stops_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let (node, thread) = start(config(dir.path()), Recorder::default()).unwrap();
        node.propose(1, b"x".to_vec()).unwrap();
        drop(node);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the raft and apply threads outlived every handle");
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn read_barriers_pass_on_a_node_that_applies_nothing_new() {
        // Barriers confirmed at an index that was applied before they came
        // must not wait for another apply (there may never be one).
        let dir = tempfile::tempdir().unwrap();
        let (node, thread) = start(config(dir.path()), Recorder::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        for _ in 0..3 {
            let passed = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), node.read_index()).await });
            assert_eq!(passed.expect("the barrier passed"), Ok(()));
        }
        rt.block_on(node.stop());
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn apply_waits_pass_once_what_was_committed_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let sm = Recorder::default();
        let (node, thread) = start(config(dir.path()), sm.clone()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let wait = |t| rt.block_on(async { tokio::time::timeout(t, node.apply_wait()).await });
        assert_eq!(wait(Duration::from_secs(10)).expect("an idle node's wait passed"), Ok(()));
        // A batch too big to apply in place goes to the apply thread, where
        // it is held while the raft thread goes on: the raft thread is first
        // held applying one entry in place while the batch queues up.
        let (hold, marked) = (sm.hold.lock().unwrap(), sm.hold_marked.lock().unwrap());
        let entered = sm.entered.load(Ordering::Acquire);
        node.propose(1, b"first".to_vec()).unwrap();
        wait_entered(&sm, entered);
        let entered = sm.entered.load(Ordering::Acquire);
        for (i, data) in [&b"held"[..], b"a", b"b", b"c", b"d"].into_iter().enumerate() {
            node.propose(2 + i as u64, data.to_vec()).unwrap();
        }
        drop(hold);
        wait_entered(&sm, entered);
        let progress = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), node.progress()).await });
        assert!(progress.is_ok(), "the raft thread is not the one held");
        assert!(wait(Duration::from_millis(300)).is_err(), "passed before the committed batch was applied");
        drop(marked);
        assert_eq!(wait(Duration::from_secs(10)).expect("the wait passed"), Ok(()));
        assert_eq!(sm.applied.lock().unwrap().len(), 6, "it passed with every entry applied");
        assert_eq!(sm.threads.lock().unwrap()[1], "apply", "the batch went to the apply thread");
        rt.block_on(node.stop());
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn a_lone_leader_passes_read_barriers_once_its_own_first_entry_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let sm = Recorder::default();
        let held = sm.hold.clone();
        let hold = held.lock().unwrap();
        let (node, thread) = start(config(dir.path()), sm.clone()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let barrier = |wait| rt.block_on(async { tokio::time::timeout(wait, node.read_barrier()).await });
        // The new leader's empty entry cannot apply: a barrier must wait.
        assert!(
            barrier(Duration::from_millis(300)).is_err(),
            "a barrier passed before the leader's first entry applied"
        );
        drop(hold);
        assert_eq!(barrier(Duration::from_secs(10)).expect("the barrier passed"), Ok(()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.status().sole_leader.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "a lone leader never took read barriers as passed");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A proposal stuck in apply (in place on the raft thread, or on the
        // apply thread if that one was busy) was answered to nobody, so
        // barriers need not wait for it, nor for the raft thread.
        let hold = held.lock().unwrap();
        let entered_before = sm.entered.load(Ordering::Acquire);
        node.propose(1, b"stuck".to_vec()).unwrap();
        for _ in 0..3 {
            assert_eq!(barrier(Duration::from_secs(10)).expect("the barrier passed"), Ok(()));
        }
        // ReadIndex itself still waits, for the stuck raft thread or apply,
        // once the stuck entry is committed, which its apply starting shows
        // (asked before, ReadIndex may pass at the index before it: that is
        // not what this checks).
        wait_entered(&sm, entered_before);
        let asked = rt.block_on(async { tokio::time::timeout(Duration::from_millis(300), node.read_index()).await });
        assert!(asked.is_err(), "ReadIndex passed while the raft thread was stuck");
        assert!(sm.applied.lock().unwrap().is_empty());
        drop(hold);
        wait_applied(&sm, 1);
        rt.block_on(node.stop());
        assert!(!node.status().sole_leader.load(Ordering::Acquire), "a stopped node takes barriers as passed");
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn after_a_restart_read_barriers_wait_for_the_log_to_be_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let sm = Recorder::default();
        let (node, thread) = start(config(dir.path()), sm.clone()).unwrap();
        for i in 0..5 {
            node.propose(i, format!("w{i}").into_bytes()).unwrap();
        }
        wait_applied(&sm, 5);
        rt.block_on(node.stop());
        thread.join().unwrap().unwrap();
        // A backend that kept nothing: the five writes (answered before
        // the restart) come back only from the log.
        let sm = Recorder::default();
        let hold = sm.hold.lock().unwrap();
        let (node, thread) = start(config(dir.path()), sm.clone()).unwrap();
        let barrier = |wait| rt.block_on(async { tokio::time::timeout(wait, node.read_barrier()).await });
        assert!(barrier(Duration::from_millis(300)).is_err(), "a barrier passed before the log was applied again");
        drop(hold);
        assert_eq!(barrier(Duration::from_secs(10)).expect("the barrier passed"), Ok(()));
        assert_eq!(sm.applied.lock().unwrap().len(), 5, "a barrier passed before all answered writes were applied");
        rt.block_on(node.stop());
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn a_panic_in_apply_stops_the_node_and_its_read_barriers() {
        // Applied in place on the raft thread (alone), or on the apply thread
        // (behind a burst): either way the node must stop, not go on
        // passing barriers over a half-applied state.
        for burst in [0, 200] {
            let dir = tempfile::tempdir().unwrap();
            let (node, thread) = start(config(dir.path()), Recorder::default()).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            for i in 0..burst {
                node.propose(i, b"x".to_vec()).unwrap();
            }
            node.propose(burst, b"panic".to_vec()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !node.status().is_stopped() {
                assert!(Instant::now() < deadline, "the node outlived a panic in apply (burst {burst})");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(!node.status().sole_leader.load(Ordering::Acquire));
            let read = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), node.read_barrier()).await });
            assert_eq!(read.expect("the barrier answered"), Err(EtcdError::Stopped));
            assert!(!matches!(thread.join(), Ok(Ok(()))), "the node thread ended cleanly after a panic in apply");
        }
    }

    /// Waits until an apply starts after `before` applies had started.
    fn wait_entered(sm: &Recorder, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sm.entered.load(Ordering::Acquire) == before {
            assert!(Instant::now() < deadline, "the proposal never reached apply");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_applied(sm: &Recorder, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sm.applied.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "{n} proposals were not applied");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_lone_entry_is_applied_in_place_and_order_holds_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let sm = Recorder::default();
        let (node, thread) = start(config(dir.path()), sm.clone()).unwrap();
        let mut expected = Vec::new();
        let mut propose = |data: String| {
            node.propose(expected.len() as u64, data.clone().into_bytes()).unwrap();
            expected.push(data.into_bytes());
        };
        propose("alone-1".into());
        wait_applied(&sm, 1);
        for i in 0..500 {
            propose(format!("burst-{i}"));
        }
        propose("after-burst".into());
        wait_applied(&sm, 502);
        // The raft thread has heard the burst is applied: nothing is queued.
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.status().applied_index() < sm.index.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the raft thread never heard how far apply got");
            std::thread::sleep(Duration::from_millis(1));
        }
        propose("alone-2".into());
        wait_applied(&sm, 503);
        assert_eq!(*sm.applied.lock().unwrap(), expected, "applied in log order");
        let threads = sm.threads.lock().unwrap().clone();
        assert_eq!(threads[0], "raft", "a lone entry was handed to the apply thread");
        assert_eq!(threads[502], "raft");
        assert!(threads.iter().any(|t| t == "apply"), "a burst of 500 was applied in place, not overlapped");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(node.stop());
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn concurrent_proposals_share_fsyncs_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sm = Recorder::default();
        let (node, thread) = start(config(dir.path()), sm.clone()).unwrap();
        // 2,000 proposals arriving together: group commit must batch them.
        for i in 0..2000u64 {
            node.propose(i, format!("p{i}").into_bytes()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while sm.applied.lock().unwrap().len() < 2000 {
            assert!(Instant::now() < deadline, "proposals were not applied");
            std::thread::sleep(Duration::from_millis(5));
        }
        let syncs = node.status().wal_syncs();
        eprintln!("2,000 concurrent proposals: {syncs} WAL fsyncs");
        assert!(syncs < 200, "2,000 concurrent writes took {syncs} fsyncs: no group commit");
        let applied: Vec<Vec<u8>> = sm.applied.lock().unwrap().clone();
        assert_eq!(applied, (0..2000).map(|i| format!("p{i}").into_bytes()).collect::<Vec<_>>(), "applied in order");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(node.stop());
        thread.join().unwrap().unwrap();

        // A restart with a state machine that lost everything replays it all.
        let fresh = Recorder::default();
        let (node, thread) = start(config(dir.path()), fresh.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while fresh.applied.lock().unwrap().len() < 2000 {
            assert!(Instant::now() < deadline, "the WAL was not replayed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*fresh.applied.lock().unwrap(), applied);
        rt.block_on(node.stop());
        thread.join().unwrap().unwrap();
        // After a stop the WAL's hard state says the whole log was committed.
        let (_, replay) = Wal::open(&config(dir.path()).wal_dir, 0).unwrap();
        assert_eq!(replay.hard_state.commit, replay.entries.last().unwrap().index);
    }
}
