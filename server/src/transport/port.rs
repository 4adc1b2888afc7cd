//! The peer port carries two kinds of connections: raft streams (the
//! transport's own framing, see `wire`) and gRPC calls (the peer service).
//! Each accepted connection is told apart by its first bytes, on a task of
//! its own; gRPC connections reach tonic with those bytes put back.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::wire::PREFACE;
use crate::server::EtcdServer;
use crate::tls::{Conn, ConnInfo, Incoming};

/// A connection gets this long to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Sorted gRPC connections waiting for tonic to take them.
const BACKLOG: usize = 128;

/// Sorts `incoming`: raft streams are served here until `stop`, the rest is
/// what the returned stream yields, for the peer service.
pub fn sort(
    server: Arc<EtcdServer>,
    mut incoming: Incoming,
    stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Sniffed>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = tx.closed() => return,
                c = incoming.next() => match c {
                    Some(Ok(c)) => c,
                    _ => return,
                },
            };
            let (server, stop, tx) = (server.clone(), stop.clone(), tx.clone());
            tokio::spawn(async move {
                let mut conn = conn;
                let mut head = [0u8; PREFACE.len()];
                match tokio::time::timeout(FIRST_BYTES_TIMEOUT, conn.read_exact(&mut head)).await {
                    Ok(Ok(_)) if head == *PREFACE => super::receiver::serve(server, conn, stop).await,
                    Ok(Ok(_)) => {
                        let _ = tx.send(Ok(Sniffed { head, taken: 0, conn })).await;
                    }
                    _ => {
                        tracing::debug!(remote = ?conn.info().remote, "a peer connection sent too little, closed")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A connection whose first bytes were read to sort it; it reads them
/// again first.
pub struct Sniffed {
    head: [u8; PREFACE.len()],
    taken: usize,
    conn: Conn,
}

impl Connected for Sniffed {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.conn.connect_info()
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.taken);
            buf.put_slice(&this.head[this.taken..this.taken + n]);
            this.taken += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }
}
