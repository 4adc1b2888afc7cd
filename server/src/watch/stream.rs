//! One client watch stream (etcd's `serverWatchStream`): creates and cancels
//! its watchers, sends their events in order, catches up the ones that are
//! behind from the store, answers progress requests and sends progress
//! notifications. Everything a stream sends leaves from its one task, so
//! responses keep the order in which they are decided.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tonic::Status;

use super::{Delivery, StreamLink, WatchHub, WatchId, WatchSpec};
use crate::error::EtcdError;
use crate::mvcc::{KeyRange, KvRead, MvccError, RangeOptions, Store};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::{event::EventType, Event};

/// Revisions read from the store per catch-up step (etcd's `watchBatchMaxRevs`).
const CATCH_UP_REVS: usize = 1000;
/// Rounds a stream tries to reach a point where nothing published is unsent.
const SETTLE_ROUNDS: usize = 64;

const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// What a stream needs from the member around it.
pub trait WatchContext: Send + Sync + 'static {
    fn header(&self, rev: i64) -> ResponseHeader;
    fn has_leader(&self) -> bool;
    /// May this stream's client watch `[key, range_end)`? The error is the
    /// cancel reason.
    fn check_watch(&self, key: &[u8], range_end: &[u8]) -> Result<(), crate::error::EtcdError>;
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Responses above this size are split when the watcher allows fragments.
    pub max_response_bytes: usize,
    pub progress_interval: Duration,
    /// The client asked (metadata `hasleader`) to be cut off without a leader.
    pub require_leader: bool,
    pub leader_check_interval: Duration,
}

struct Watcher {
    spec: WatchSpec,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// While catching up: the next revision to read from the store.
    behind: Option<i64>,
    /// Events went out since the last progress tick (which then skips it).
    sent_events: bool,
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

/// The stream has ended: the client left, or it was cut off.
struct Closed;

pub struct WatchStream<C> {
    ctx: Arc<C>,
    hub: Arc<WatchHub>,
    store: Arc<Store>,
    cfg: StreamConfig,
    link: Arc<StreamLink>,
    queue: mpsc::Receiver<Delivery>,
    out: Out,
    watchers: HashMap<WatchId, Watcher>,
    next_id: WatchId,
    progress_requested: bool,
}

enum Step {
    Request(WatchRequest),
    Deliver(Delivery),
    FellBehind,
    CatchUp,
    ProgressTick,
    LeaderCheck,
    End,
}

impl<C: WatchContext> WatchStream<C> {
    pub fn new(ctx: Arc<C>, hub: Arc<WatchHub>, store: Arc<Store>, cfg: StreamConfig, out: Out) -> Self {
        let (link, queue) = hub.open_stream();
        WatchStream {
            ctx,
            hub,
            store,
            cfg,
            link,
            queue,
            out,
            watchers: HashMap::new(),
            next_id: 0,
            progress_requested: false,
        }
    }

    /// Serves the stream until the client goes away or it is cut off.
    pub async fn run(mut self, inbound: impl Stream<Item = Result<WatchRequest, Status>> + Unpin) {
        let _ = self.serve(inbound).await;
        for id in self.watchers.keys() {
            self.hub.unsync(&self.link, *id);
            self.hub.watcher_removed();
        }
    }

    async fn serve(
        &mut self,
        mut inbound: impl Stream<Item = Result<WatchRequest, Status>> + Unpin,
    ) -> Result<(), Closed> {
        let mut progress = tokio::time::interval(self.cfg.progress_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        progress.reset();
        let mut leader = tokio::time::interval(self.cfg.leader_check_interval);
        leader.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let catching_up = self.watchers.values().any(|w| w.behind.is_some());
            let step = tokio::select! {
                biased;
                _ = self.out.closed() => Step::End,
                req = inbound.next() => match req {
                    Some(Ok(r)) => Step::Request(r),
                    _ => Step::End,
                },
                Some(d) = self.queue.recv() => Step::Deliver(d),
                _ = self.link.fell_behind_signal() => Step::FellBehind,
                _ = std::future::ready(()), if catching_up => Step::CatchUp,
                _ = progress.tick() => Step::ProgressTick,
                _ = leader.tick(), if self.cfg.require_leader => Step::LeaderCheck,
            };
            match step {
                Step::Request(r) => self.handle(r).await?,
                Step::Deliver(d) => self.deliver(d).await?,
                Step::FellBehind => self.take_fell_behind(),
                Step::CatchUp => self.catch_up().await?,
                Step::ProgressTick => self.progress_notify().await?,
                Step::LeaderCheck => {
                    if !self.ctx.has_leader() {
                        let _ = self.out.send(Err(EtcdError::NoLeader.into())).await;
                        return Err(Closed);
                    }
                }
                Step::End => return Err(Closed),
            }
            if self.progress_requested {
                self.answer_progress_request().await?;
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.hub.unsync(&self.link, c.watch_id);
                    self.hub.watcher_removed();
                    let header = Some(self.ctx.header(self.hub.published()));
                    self.send(WatchResponse { header, watch_id: c.watch_id, canceled: true, ..Default::default() })
                        .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        // etcd's rules: no key is the smallest key, "\0" as range end is
        // "every key from key on".
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let denied = self.ctx.check_watch(&key, &c.range_end).err().map(|e| e.go_status_text());
        let spec = WatchSpec {
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            end: c.range_end,
            key,
        };
        let published = self.hub.published();
        let header = Some(self.ctx.header(published));
        let refused = if let Some(reason) = &denied {
            Some(reason.as_str())
        } else if spec.end != [0] && !spec.end.is_empty() && spec.key >= spec.end {
            Some(ERR_EMPTY_RANGE)
        } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            Some(ERR_DUPLICATE_ID)
        } else {
            None
        };
        if let Some(reason) = refused {
            let resp = WatchResponse {
                header,
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason.into(),
                ..Default::default()
            };
            return self.send(resp).await;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let start = if c.start_revision == 0 { published + 1 } else { c.start_revision };
        let synced = self.hub.try_sync(&self.link, id, &spec, start);
        self.hub.watcher_added();
        self.watchers.insert(
            id,
            Watcher {
                spec,
                prev_kv: c.prev_kv,
                fragment: c.fragment,
                progress_notify: c.progress_notify,
                behind: if synced { None } else { Some(start) },
                sent_events: false,
            },
        );
        self.send(WatchResponse { header, watch_id: id, created: true, ..Default::default() }).await
    }

    async fn deliver(&mut self, d: Delivery) -> Result<(), Closed> {
        let Some(w) = self.watchers.get(&d.watch_id) else {
            return Ok(()); // canceled since
        };
        let events: Vec<Event> = d.changes.events.iter().filter(|e| w.spec.matches(e)).cloned().collect();
        self.send_events(d.watch_id, d.changes.rev, events).await
    }

    async fn send_events(&mut self, id: WatchId, header_rev: i64, mut events: Vec<Event>) -> Result<(), Closed> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        if events.is_empty() {
            return Ok(());
        }
        w.sent_events = true;
        let fragment = w.fragment;
        if w.prev_kv {
            events = self.with_prev_kvs(events).await;
        }
        let resp =
            WatchResponse { header: Some(self.ctx.header(header_rev)), watch_id: id, events, ..Default::default() };
        if !fragment {
            return self.send(resp).await;
        }
        for part in fragments(resp, self.cfg.max_response_bytes) {
            self.send(part).await?;
        }
        Ok(())
    }

    /// Each update's previous value, read at the revision before it (as etcd
    /// does; compacted away means none).
    async fn with_prev_kvs(&self, events: Vec<Event>) -> Vec<Event> {
        let store = self.store.clone();
        let fill = move || {
            let read = store.read();
            events
                .into_iter()
                .map(|mut e| {
                    let create = e.r#type == EventType::Put as i32
                        && e.kv.as_ref().is_some_and(|kv| kv.create_revision == kv.mod_revision);
                    if let (false, Some(kv)) = (create, &e.kv) {
                        let opts = RangeOptions { rev: kv.mod_revision - 1, limit: 1, ..Default::default() };
                        if let Ok(r) = read.range(KeyRange::new(&kv.key, b""), opts) {
                            e.prev_kv = r.kvs.into_iter().next();
                        }
                    }
                    e
                })
                .collect::<Vec<_>>()
        };
        match tokio::task::spawn_blocking(fill).await {
            Ok(events) => events,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn take_fell_behind(&mut self) {
        for (id, rev) in self.link.take_fell_behind() {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.behind = Some(w.behind.map_or(rev, |b| b.min(rev)));
            }
        }
    }

    /// Sends everything queued, and returns a revision up to which every
    /// synced watcher has been sent all its events (none after it), or None if
    /// writes kept that point moving.
    async fn settle(&mut self) -> Result<Option<i64>, Closed> {
        for _ in 0..SETTLE_ROUNDS {
            let published = self.hub.published();
            self.take_fell_behind();
            while let Ok(d) = self.queue.try_recv() {
                self.deliver(d).await?;
            }
            if self.hub.published() == published {
                return Ok(Some(published));
            }
        }
        Ok(None)
    }

    /// One step of catching up the watchers that are behind: a bounded
    /// stretch of history read once for all of them.
    async fn catch_up(&mut self) -> Result<(), Closed> {
        // Deliveries queued before a watcher fell behind are older than what
        // the store read returns: they go first.
        self.settle().await?;
        let Some(from) = self.watchers.values().filter_map(|w| w.behind).min() else {
            return Ok(());
        };
        let store = self.store.clone();
        let history = match tokio::task::spawn_blocking(move || store.history(from, CATCH_UP_REVS)).await {
            Ok(h) => h,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let history = match history {
            Ok(h) => h,
            Err(MvccError::Compacted) => return self.cancel_compacted().await,
            Err(e) => {
                tracing::error!(error = %e, "watch catch-up could not read the store");
                let _ = self.out.send(Err(EtcdError::from(e).into())).await;
                return Err(Closed);
            }
        };
        let ids: Vec<WatchId> = self.watchers.iter().filter(|(_, w)| w.behind.is_some()).map(|(id, _)| *id).collect();
        for id in ids {
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            let Some(next) = w.behind else {
                continue;
            };
            let events: Vec<Event> = history
                .events
                .iter()
                .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= next) && w.spec.matches(e))
                .cloned()
                .collect();
            let next = next.max(history.next);
            w.behind = Some(next);
            if next > history.current && self.hub.try_sync(&self.link, id, &w.spec, next) {
                w.behind = None;
            }
            self.send_events(id, history.current, events).await?;
        }
        Ok(())
    }

    /// Watchers whose next revision was compacted away get etcd's canceled
    /// response carrying the compaction revision.
    async fn cancel_compacted(&mut self) -> Result<(), Closed> {
        let compact_rev = self.store.compact_rev();
        let gone: Vec<WatchId> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.behind.is_some_and(|b| b < compact_rev))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.watchers.remove(&id);
            self.hub.watcher_removed();
            let resp = WatchResponse {
                header: Some(self.ctx.header(0)),
                watch_id: id,
                canceled: true,
                compact_revision: compact_rev,
                ..Default::default()
            };
            self.send(resp).await?;
        }
        Ok(())
    }

    /// A progress request is answered (watch ID -1) once every watcher of the
    /// stream is synced, with a revision none of them has unsent events at
    /// or below.
    async fn answer_progress_request(&mut self) -> Result<(), Closed> {
        if self.watchers.values().any(|w| w.behind.is_some()) {
            return Ok(());
        }
        let Some(rev) = self.settle().await? else {
            return Ok(());
        };
        if self.watchers.values().any(|w| w.behind.is_some()) {
            return Ok(());
        }
        self.progress_requested = false;
        self.send(WatchResponse { header: Some(self.ctx.header(rev)), watch_id: -1, ..Default::default() }).await
    }

    /// Periodic notifications for synced watchers that asked for them and
    /// had no events since the last tick.
    async fn progress_notify(&mut self) -> Result<(), Closed> {
        if !self.watchers.values().any(|w| w.progress_notify) {
            return Ok(());
        }
        let Some(rev) = self.settle().await? else {
            return Ok(());
        };
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && w.behind.is_none() && !w.sent_events {
                due.push(*id);
            }
            w.sent_events = false;
        }
        for id in due {
            self.send(WatchResponse { header: Some(self.ctx.header(rev)), watch_id: id, ..Default::default() }).await?;
        }
        Ok(())
    }
}

/// Splits a response whose events exceed `max_bytes` into several, all but
/// the last marked `fragment` (etcd's `sendFragments`); one event is never split.
fn fragments(resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < max_bytes || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut parts = Vec::new();
    let mut events = resp.events.into_iter().peekable();
    let template = WatchResponse { events: Vec::new(), fragment: true, ..resp };
    while events.peek().is_some() {
        let mut part = template.clone();
        while let Some(e) = events.next_if(|e| {
            part.events.is_empty() || part.encoded_len() + prost::encoding::message::encoded_len(11, e) < max_bytes
        }) {
            part.events.push(e);
        }
        part.fragment = events.peek().is_some();
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn event(i: usize, value_len: usize) -> Event {
        let kv =
            KeyValue { key: format!("k{i}").into(), value: vec![7; value_len], mod_revision: 2, ..Default::default() };
        Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None }
    }

    #[test]
    fn fragments_split_by_size_keep_every_event_in_order_and_mark_all_but_the_last() {
        let resp =
            WatchResponse { watch_id: 3, events: (0..10).map(|i| event(i, 400)).collect(), ..Default::default() };
        let parts = fragments(resp.clone(), 1000);
        assert!(parts.len() > 1);
        for p in &parts[..parts.len() - 1] {
            assert!(p.fragment && p.encoded_len() < 1000 && p.watch_id == 3);
        }
        assert!(!parts.last().unwrap().fragment);
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, resp.events);
        // Small enough, or one event however big: unchanged.
        assert_eq!(fragments(resp.clone(), 1 << 20), vec![resp]);
        let one = WatchResponse { events: vec![event(0, 5000)], ..Default::default() };
        assert_eq!(fragments(one.clone(), 1000), vec![one]);
    }
}
