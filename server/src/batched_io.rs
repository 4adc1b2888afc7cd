//! Write batching for client connections.
//!
//! hyper's HTTP/2 server runs every request as its own task, and each task
//! that finishes wakes the connection task, which writes and flushes what is
//! ready: one `writev` per response, even when a read brought in many
//! requests. Each `writev` on loopback costs the full TCP send path plus a
//! wake-up of the peer (a quarter of server CPU for one-key ranges).
//!
//! `BatchedIo` keeps written bytes in a buffer and, on the first flush of a
//! batch, yields once (wakes itself and returns `Pending`) so that request
//! tasks already queued on the runtime can add their responses; the next flush
//! writes them all in one call. grpc-go's writer yields the same way before a
//! small flush. The cost is one extra task poll per flush.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::api::response_budget::{ClientConn, ResponseBudget};

/// Above this many buffered bytes writes go out without waiting for a flush,
/// and a write at least this big bypasses the buffer.
const BUFFER_LIMIT: usize = 64 * 1024;

pub struct BatchedIo<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
    /// The current flush has yielded once.
    yielded: bool,
    /// Handed to each request with the connection's info.
    budget: Arc<ResponseBudget>,
}

impl<T> BatchedIo<T> {
    pub fn new(inner: T, budget: Arc<ResponseBudget>) -> Self {
        BatchedIo { inner, buf: Vec::new(), written: 0, yielded: false, budget }
    }
}

impl<T: AsyncWrite + Unpin> BatchedIo<T> {
    /// Writes out the whole buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_write_slices(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if !self.buf.is_empty() && self.buf.len() + total > BUFFER_LIMIT {
            std::task::ready!(self.poll_drain(cx))?;
        }
        if self.buf.is_empty() && total >= BUFFER_LIMIT {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() && !this.yielded {
            // A self-wake puts this task behind the ones already queued.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BatchedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for BatchedIo<T> {
    type ConnectInfo = ClientConn<T::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ClientConn { transport: self.inner.connect_info(), budget: self.budget.clone() }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    /// Records what reaches the socket, one entry per write call.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(io: &mut BatchedIo<Socket>, cx: &mut Context<'_>, data: &[u8]) {
        assert!(matches!(Pin::new(io).poll_write(cx, data), Poll::Ready(Ok(n)) if n == data.len()));
    }

    #[test]
    fn writes_wait_for_the_second_flush_and_leave_in_one_call() {
        let wakes = Arc::new(CountWakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedIo::new(Socket::default(), ResponseBudget::new(0));
        write(&mut io, &mut cx, b"first ");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending(), "the first flush yields");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "and wakes its task again");
        assert!(io.inner.writes.is_empty());
        write(&mut io, &mut cx, b"second");
        assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(io.inner.writes, vec![b"first second".to_vec()]);
        assert_eq!(io.inner.flushes, 1);
        // An empty flush goes straight through.
        assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(io.inner.flushes, 2);
    }

    #[test]
    fn big_writes_bypass_the_buffer_and_a_full_buffer_drains_first() {
        let waker = Waker::from(Arc::new(CountWakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedIo::new(Socket::default(), ResponseBudget::new(0));
        let big = vec![7u8; BUFFER_LIMIT];
        write(&mut io, &mut cx, &big);
        assert_eq!(io.inner.writes, vec![big.clone()], "nothing buffered: written through");
        write(&mut io, &mut cx, b"small");
        write(&mut io, &mut cx, &big);
        assert_eq!(io.inner.writes, vec![big.clone(), b"small".to_vec(), big.clone()], "order kept");
    }

    #[test]
    fn shutdown_writes_what_is_buffered() {
        let waker = Waker::from(Arc::new(CountWakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedIo::new(Socket::default(), ResponseBudget::new(0));
        write(&mut io, &mut cx, b"goaway");
        assert!(matches!(Pin::new(&mut io).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(io.inner.writes, vec![b"goaway".to_vec()]);
        assert!(io.inner.shut);
    }
}
