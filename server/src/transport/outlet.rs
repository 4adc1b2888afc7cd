//! Where raft's messages for one peer leave: the raft thread writes each
//! straight into the peer's raft stream when the socket takes it, so a
//! message crosses no thread on its way out. What the socket does not take
//! at once (or what comes while the stream is being opened) waits here, for
//! the peer's sender task to write when the socket is ready again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::sync::Notify;

use super::wire;
use crate::tls::Conn;

/// Bytes of raft messages waiting for one peer before sends are refused.
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// What the pending buffer keeps of its room once empty.
const KEPT_CAPACITY: usize = 64 * 1024;

pub(super) struct Outlet {
    state: Mutex<State>,
    /// Something waits for the sender task: bytes, a flush, or an error.
    wake: Notify,
    /// Bytes of messages taken (etcd's `peer_sent_bytes_total`).
    sent: prometheus::IntCounter,
}

#[derive(Default)]
struct State {
    /// The open stream's writing half; None while one is being opened.
    io: Option<WriteHalf<Conn>>,
    /// Framed bytes not yet taken by the socket, in order.
    pending: Vec<u8>,
    /// Written but maybe not flushed (TLS buffers records).
    unflushed: bool,
    /// A write failed: the stream is done for.
    failed: Option<io::Error>,
    /// When the socket last took bytes.
    progressed: Option<Instant>,
}

impl Outlet {
    pub fn new(sent: prometheus::IntCounter) -> Outlet {
        Outlet { state: Mutex::default(), wake: Notify::new(), sent }
    }

    /// Takes one encoded raft message (empty: a keepalive) for the peer,
    /// written `now` on the caller's thread as far as the socket takes it
    /// (with what waited before it, in order), else by the sender task;
    /// false if too much already waits.
    pub fn send(&self, msg: &[u8], now: bool) -> bool {
        let mut state = self.state.lock();
        if state.pending.len() + msg.len() > MAX_PENDING_BYTES {
            return false;
        }
        // Behind a backlog the task is writing, a message waits its turn:
        // the caller never writes (or encrypts) someone else's backlog.
        let behind = !state.pending.is_empty();
        if wire::put_frame(&mut state.pending, msg).is_err() {
            return false;
        }
        self.sent.inc_by(msg.len() as u64);
        // The sender task is woken only for what is left. (A poll with no
        // waker may take the task's place as the one the socket wakes: the
        // task is woken to poll again.)
        let mut cx = Context::from_waker(Waker::noop());
        if !now || behind || (state.io.is_some() && !matches!(state.write(&mut cx), Poll::Ready(Ok(())))) {
            self.wake.notify_one();
        }
        true
    }

    /// Whether bytes wait for the socket and it took some within `within`:
    /// a keepalive's answer may be late behind them (a peer catching up
    /// over a slow link), not missing.
    pub fn busy_within(&self, within: Duration) -> bool {
        let state = self.state.lock();
        !state.pending.is_empty() && state.progressed.is_some_and(|at| at.elapsed() < within)
    }

    /// A new stream is open: what waited goes out first.
    pub fn attach(&self, io: WriteHalf<Conn>) {
        let mut state = self.state.lock();
        state.io = Some(io);
        state.unflushed = false;
        state.failed = None;
        self.wake.notify_one();
    }

    /// The stream failed: what waits for it is dropped (raft sends again)
    /// and messages wait for the next stream.
    pub fn detach(&self) {
        *self.state.lock() = State::default();
    }

    /// Writes what the socket did not take at once, whenever there is some,
    /// until a write fails (the sender task's job while the stream is open).
    pub async fn drain(&self) -> io::Error {
        loop {
            self.wake.notified().await;
            loop {
                tokio::select! {
                    biased;
                    written = std::future::poll_fn(|cx| self.state.lock().write(cx)) => match written {
                        Ok(()) => break,
                        Err(e) => return e,
                    },
                    // The raft thread wrote meanwhile and left some: poll
                    // again, so that the socket wakes this task.
                    _ = self.wake.notified() => {}
                }
            }
        }
    }
}

impl State {
    /// Writes and flushes pending bytes until done, the socket is full
    /// (Pending, with `cx` woken once it has room), or a write fails.
    fn write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(io::Error::new(e.kind(), e.to_string())));
        }
        let Some(io) = self.io.as_mut() else { return Poll::Ready(Ok(())) };
        let mut result = Ok(());
        let mut written = 0;
        while written < self.pending.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.pending[written..]) {
                Poll::Ready(Ok(0)) => {
                    result = Err(io::ErrorKind::WriteZero.into());
                    break;
                }
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => {
                    result = Err(e);
                    break;
                }
                Poll::Pending => break,
            }
        }
        if written > 0 {
            self.pending.drain(..written);
            self.progressed = Some(Instant::now());
            // A burst's buffer is not kept for good.
            if self.pending.is_empty() && self.pending.capacity() > KEPT_CAPACITY {
                self.pending = Vec::with_capacity(KEPT_CAPACITY);
            }
        }
        if result.is_ok() && self.unflushed {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => result = Err(e),
                Poll::Pending => {}
            }
        }
        if let Err(e) = result {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            return Poll::Ready(Err(e));
        }
        if self.pending.is_empty() && !self.unflushed {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::tls::ConnInfo;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_go_at_once_or_through_the_task_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (dialed, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let (_read, write) = tokio::io::split(Conn::plain(dialed.unwrap(), ConnInfo::default()));
        let mut frames = wire::Frames::new(accepted.unwrap().0);
        let outlet = Arc::new(Outlet::new(prometheus::IntCounter::new("sent", "sent").unwrap()));
        let mut got = Vec::new();
        outlet.attach(write);
        // Written on the caller's thread, with no task draining.
        assert!(outlet.send(b"now", true));
        got.extend(frames.next().await.unwrap().unwrap());
        assert_eq!(got, [&b"now"[..]]);
        // Left for the task; and a burst larger than the socket takes at
        // once: the task writes the rest when the reader makes room.
        let task = tokio::spawn({
            let outlet = outlet.clone();
            async move { outlet.drain().await }
        });
        assert!(outlet.send(b"later", false));
        let big = vec![7u8; 1 << 20];
        for _ in 0..16 {
            assert!(outlet.send(&big, true));
        }
        // Behind the backlog, a message for now waits its turn.
        assert!(outlet.send(b"last", true));
        assert!(outlet.busy_within(Duration::from_secs(3)), "the reader has not read: bytes wait");
        got.clear();
        while got.len() < 18 {
            got.extend(frames.next().await.unwrap().unwrap());
        }
        assert_eq!(&got[0][..], b"later");
        assert!(got[1..17].iter().all(|m| m[..] == big[..]));
        assert_eq!(&got[17][..], b"last");
        assert_eq!(outlet.sent.get(), 3 + 5 + 16 * (1 << 20) + 4, "every message's bytes counted once");
        assert!(!outlet.busy_within(Duration::from_secs(3)), "all written");
        assert!(outlet.state.lock().pending.capacity() <= KEPT_CAPACITY, "the burst's room was let go");
        // The stream failed: what waits is dropped, and sends wait for the
        // next one, which takes them first.
        task.abort();
        outlet.detach();
        assert!(outlet.send(b"after", true));
        assert_eq!(outlet.state.lock().pending.len(), 4 + 5);
    }
}
