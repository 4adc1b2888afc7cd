//! Watches (etcd's watchable store). The applier publishes every committed
//! revision's changes to the hub; each synced watcher gets them at once
//! through its stream's bounded queue. A watcher whose queue is full is taken
//! out of the hub and its stream catches it up from the store's history, so a
//! slow watcher never blocks writes or other watchers.
//!
//! Exactly once, in order: a watcher is in the hub only from the first
//! revision its stream has not sent; the hub publishes revisions in order
//! under one lock, and a stream moves a watcher back into the hub only when
//! its catch-up has passed the last published revision.

pub mod stream;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use crate::mvcc::KeyRange;
use crate::proto::mvccpb::{event::EventType, Event};

pub type WatchId = i64;

/// What a watcher watches: etcd's key / range_end rules and event filters.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// Empty: the single key; `[0]`: every key from `key` on; else `[key, end)`.
    pub end: Vec<u8>,
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchSpec {
    pub fn matches(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else {
            return false;
        };
        let put = ev.r#type == EventType::Put as i32;
        if (put && self.no_put) || (!put && self.no_delete) {
            return false;
        }
        KeyRange::new(&self.key, &self.end).contains(&kv.key)
    }
}

/// The changes of one revision, shared by every watcher they go to.
#[derive(Debug)]
pub struct Changes {
    pub rev: i64,
    pub events: Vec<Event>,
}

#[derive(Debug)]
pub struct Delivery {
    pub watch_id: WatchId,
    pub changes: Arc<Changes>,
}

/// What one stream shares with the hub.
pub struct StreamLink {
    id: u64,
    tx: mpsc::Sender<Delivery>,
    /// Watchers the hub dropped because the queue was full, each with the
    /// first revision it did not get.
    fell_behind: Mutex<Vec<(WatchId, i64)>>,
    wake: Notify,
}

impl StreamLink {
    pub fn take_fell_behind(&self) -> Vec<(WatchId, i64)> {
        std::mem::take(&mut *self.fell_behind.lock())
    }

    pub async fn fell_behind_signal(&self) {
        self.wake.notified().await
    }
}

struct Synced {
    spec: WatchSpec,
    /// Revisions below this were sent by the stream itself.
    min_rev: i64,
    link: Arc<StreamLink>,
}

type Slot = (u64, WatchId);

#[derive(Default)]
struct HubState {
    published: i64,
    watchers: HashMap<Slot, Synced>,
    /// Synced single-key watchers by key; the rest are in `ranges`.
    by_key: HashMap<Vec<u8>, HashSet<Slot>>,
    ranges: HashSet<Slot>,
}

impl HubState {
    fn insert(&mut self, slot: Slot, w: Synced) {
        if w.spec.end.is_empty() {
            self.by_key.entry(w.spec.key.clone()).or_default().insert(slot);
        } else {
            self.ranges.insert(slot);
        }
        self.watchers.insert(slot, w);
    }

    fn remove(&mut self, slot: Slot) -> bool {
        let Some(w) = self.watchers.remove(&slot) else {
            return false;
        };
        if w.spec.end.is_empty() {
            if let Some(set) = self.by_key.get_mut(&w.spec.key) {
                set.remove(&slot);
                if set.is_empty() {
                    self.by_key.remove(&w.spec.key);
                }
            }
        } else {
            self.ranges.remove(&slot);
        }
        true
    }
}

pub struct WatchHub {
    state: Mutex<HubState>,
    next_stream: AtomicU64,
    /// Watchers in all streams, synced or not (for metrics).
    total: AtomicU64,
}

/// Deliveries a stream may have queued before its watchers count as slow.
const STREAM_QUEUE: usize = 1024;

impl WatchHub {
    pub fn new(current_rev: i64) -> WatchHub {
        WatchHub {
            state: Mutex::new(HubState { published: current_rev, ..Default::default() }),
            next_stream: AtomicU64::new(1),
            total: AtomicU64::new(0),
        }
    }

    /// The last revision whose changes every synced watcher has been given.
    pub fn published(&self) -> i64 {
        self.state.lock().published
    }

    pub fn watcher_count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Watchers catching up from the store rather than fed by the hub.
    pub fn unsynced_count(&self) -> u64 {
        let synced = self.state.lock().watchers.len() as u64;
        self.watcher_count().saturating_sub(synced)
    }

    /// A new stream: its link to the hub and the queue it reads.
    pub fn open_stream(&self) -> (Arc<StreamLink>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        (Arc::new(StreamLink { id, tx, fell_behind: Mutex::default(), wake: Notify::new() }), rx)
    }

    /// Puts a watcher in the hub if every revision before `from` is already
    /// published (so the stream has sent, or will never need, them all);
    /// otherwise the stream must catch up further first.
    pub fn try_sync(&self, link: &Arc<StreamLink>, id: WatchId, spec: &WatchSpec, from: i64) -> bool {
        let mut st = self.state.lock();
        if from <= st.published {
            return false;
        }
        st.insert((link.id, id), Synced { spec: spec.clone(), min_rev: from, link: link.clone() });
        true
    }

    /// Takes a watcher out of the hub (no-op if it is catching up).
    pub fn unsync(&self, link: &StreamLink, id: WatchId) {
        self.state.lock().remove((link.id, id));
    }

    pub fn watcher_added(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watcher_removed(&self) {
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    /// The store's history was replaced (a snapshot install): every synced
    /// watcher leaves the hub and catches up from the store from the first
    /// revision it did not get, as one that fell behind does (or learns it
    /// was compacted away).
    pub fn resync_all(&self, current_rev: i64) {
        let mut st = self.state.lock();
        let next = st.published + 1;
        for ((_, id), w) in st.watchers.drain() {
            w.link.fell_behind.lock().push((id, next.max(w.min_rev)));
            w.link.wake.notify_one();
        }
        st.by_key.clear();
        st.ranges.clear();
        st.published = current_rev;
    }

    /// Hands a committed batch's changes (in revision order) to the synced
    /// watchers they match, and records `current_rev` as published.
    pub fn publish(&self, events: Vec<Event>, current_rev: i64) {
        let mut st = self.state.lock();
        // Published only once the whole batch is handed out (the lock is held
        // throughout, so nobody sees a value in between).
        st.published = st.published.max(current_rev);
        if st.watchers.is_empty() {
            return;
        }
        let mut events = events.into_iter().peekable();
        while let Some(first) = events.next() {
            let rev = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut group = vec![first];
            while let Some(next) = events.next_if(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) == rev) {
                group.push(next);
            }
            let changes = Arc::new(Changes { rev, events: group });
            deliver(&mut st, &changes);
        }
    }
}

fn deliver(st: &mut HubState, changes: &Arc<Changes>) {
    let mut targets: Vec<Slot> = st.ranges.iter().copied().collect();
    for ev in &changes.events {
        if let Some(slots) = ev.kv.as_ref().and_then(|kv| st.by_key.get(&kv.key)) {
            targets.extend(slots.iter().copied());
        }
    }
    let mut dropped = Vec::new();
    for slot in targets {
        let Some(w) = st.watchers.get(&slot) else {
            continue;
        };
        if changes.rev < w.min_rev || !changes.events.iter().any(|e| w.spec.matches(e)) {
            continue;
        }
        match w.link.tx.try_send(Delivery { watch_id: slot.1, changes: changes.clone() }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                w.link.fell_behind.lock().push((slot.1, changes.rev));
                w.link.wake.notify_one();
                dropped.push(slot);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(slot),
        }
    }
    for slot in dropped {
        st.remove(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn put(key: &str, rev: i64) -> Event {
        let kv =
            KeyValue { key: key.into(), mod_revision: rev, create_revision: rev, version: 1, ..Default::default() };
        Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None }
    }

    fn spec(key: &str, end: &str) -> WatchSpec {
        WatchSpec { key: key.into(), end: end.into(), no_put: false, no_delete: false }
    }

    #[test]
    fn synced_watchers_get_matching_revisions_from_their_start() {
        let hub = WatchHub::new(1);
        let (link, mut rx) = hub.open_stream();
        assert!(!hub.try_sync(&link, 1, &spec("a", ""), 1), "revision 1 is published: must catch up first");
        assert!(hub.try_sync(&link, 1, &spec("a", ""), 2));
        assert!(hub.try_sync(&link, 2, &spec("b", "c"), 4));
        hub.publish(vec![put("a", 2), put("b", 2)], 2);
        hub.publish(vec![put("bb", 3)], 3);
        hub.publish(vec![put("a", 4), put("bz", 4), put("c", 4)], 4);
        let mut got: Vec<(i64, i64, usize)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|d| (d.watch_id, d.changes.rev, d.changes.events.len()))
            .collect();
        // Revisions come in order; watchers of one revision in any order.
        got.sort_by_key(|&(id, rev, _)| (rev, id));
        // Watcher 2 starts at 4, so revision 3 is not its.
        assert_eq!(got, vec![(1, 2, 2), (1, 4, 3), (2, 4, 3)]);
        assert_eq!(hub.published(), 4);
    }

    #[test]
    fn a_full_queue_takes_the_watcher_out_and_reports_the_first_missed_revision() {
        let hub = WatchHub::new(0);
        let (link, mut rx) = hub.open_stream();
        assert!(hub.try_sync(&link, 7, &spec("k", ""), 1));
        let total = STREAM_QUEUE as i64 + 10;
        for rev in 1..=total {
            hub.publish(vec![put("k", rev)], rev);
        }
        assert_eq!(link.take_fell_behind(), vec![(7, STREAM_QUEUE as i64 + 1)]);
        let delivered = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(delivered, STREAM_QUEUE);
        // Out of the hub: nothing more is queued for it.
        hub.publish(vec![put("k", total + 1)], total + 1);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn filters_and_ranges() {
        let no_put = WatchSpec { no_put: true, ..spec("a", "\0") };
        assert!(!no_put.matches(&put("b", 1)));
        let mut del = put("b", 1);
        del.r#type = EventType::Delete as i32;
        assert!(no_put.matches(&del));
        assert!(spec("a", "\0").matches(&put("zzz", 1)));
        assert!(!spec("b", "c").matches(&put("c", 1)));
        assert!(!spec("b", "").matches(&put("bb", 1)));
    }
}
