//! The raft stream's wire format. Raft messages travel on a plain framed
//! byte stream (TCP, or TLS for `https://` peers) rather than a gRPC stream:
//! each message then costs one hand-over between threads on either side
//! (the raft thread and the task owning the socket) instead of passing
//! through HTTP/2's body pipe and connection tasks as well.
//!
//! The dialer opens with `PREFACE` and its header (version, cluster ID,
//! member ID); the receiver answers an empty frame (admitted) or a refusal,
//! then takes frames: each a big-endian `u32` length and that many bytes of
//! one encoded raft message. An empty frame is a keepalive: the dialer sends
//! one every second and the receiver answers it, so that either end finds a
//! silent peer (cut off without a reset). From the receiver, a frame with
//! bytes is a refusal's reason, after which it closes the stream.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::PeerHeader;

/// How a raft stream starts; as long as HTTP/2's preface's first line, and
/// unlike it, so the peer port tells the two apart by their first bytes.
pub const PREFACE: &[u8; 16] = b"ferrocd-raft\r\n\r\n";
const HEADER_LEN: usize = 4 + 8 + 8;
/// Bytes read from the socket at a time (more when a message is larger).
const READ_CHUNK: usize = 64 * 1024;

/// What the dialer writes first: the preface and its header.
pub fn opening(header: &PeerHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFACE.len() + HEADER_LEN);
    out.extend_from_slice(PREFACE);
    out.extend_from_slice(&header.version.to_be_bytes());
    out.extend_from_slice(&header.cluster_id.to_be_bytes());
    out.extend_from_slice(&header.from.to_be_bytes());
    out
}

/// Appends one frame holding `payload` (empty: a keepalive or an admission).
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a raft message over 4 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(4 + payload.len());
    put_frame(&mut out, payload)?;
    w.write_all(&out).await?;
    w.flush().await
}

/// Reads frames, handing over every whole frame that one read brought in
/// (raft steps them as one batch).
pub struct Frames<R> {
    io: R,
    buf: BytesMut,
    /// Reading fails (TimedOut) after this long without a byte.
    idle: Option<Duration>,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    pub fn new(io: R) -> Frames<R> {
        Frames { io, buf: BytesMut::with_capacity(READ_CHUNK), idle: None }
    }

    /// Frames whose reading fails after `idle` without a byte (a frame
    /// that is still arriving is not silence).
    pub fn with_idle(io: R, idle: Duration) -> Frames<R> {
        Frames { idle: Some(idle), ..Frames::new(io) }
    }

    /// The dialer's header, after the preface (which the peer port read).
    pub async fn header(&mut self) -> io::Result<PeerHeader> {
        self.fill(HEADER_LEN).await?;
        let mut h = self.buf.split_to(HEADER_LEN);
        Ok(PeerHeader { version: h.get_u32(), cluster_id: h.get_u64(), from: h.get_u64() })
    }

    /// The next whole frames, at least one; None once the other end closed
    /// between frames.
    pub async fn next(&mut self) -> io::Result<Option<Vec<Bytes>>> {
        let mut frames = Vec::new();
        loop {
            while let Some(len) = self.whole_frame() {
                self.buf.advance(4);
                frames.push(self.buf.split_to(len).freeze());
            }
            if !frames.is_empty() {
                return Ok(Some(frames));
            }
            // Room grows with what arrives, not with what a length claims.
            self.buf.reserve(READ_CHUNK);
            if self.read().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The length of the frame at the front of the buffer, if it is whole.
    fn whole_frame(&self) -> Option<usize> {
        let len = self.buf.get(..4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        (self.buf.len() >= 4 + len).then_some(len)
    }

    async fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.read().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    async fn read(&mut self) -> io::Result<usize> {
        let read = self.io.read_buf(&mut self.buf);
        match self.idle {
            None => read.await,
            Some(idle) => tokio::time::timeout(idle, read)
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, format!("silent for {idle:?}")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_in_batches_across_reads() {
        let header = PeerHeader::new(0xabc, 7);
        let mut bytes = opening(&header)[PREFACE.len()..].to_vec();
        for payload in [&b"one"[..], b"", &vec![9u8; 200_000]] {
            put_frame(&mut bytes, payload).unwrap();
        }
        // Delivered a few bytes at a time, as a socket may.
        let (mut tx, rx) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            tx.write_all(&bytes).await.unwrap();
        });
        let mut frames = Frames::new(rx);
        assert_eq!(frames.header().await.unwrap(), header);
        let mut got = Vec::new();
        while let Some(batch) = frames.next().await.unwrap() {
            got.extend(batch);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(&got[0][..], b"one");
        assert!(got[1].is_empty());
        assert_eq!(got[2].len(), 200_000);
    }

    #[tokio::test]
    async fn a_frame_still_arriving_is_not_silence() {
        let idle = Duration::from_millis(400);
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut frames = Frames::with_idle(rx, idle);
        let writer = tokio::spawn(async move {
            let mut bytes = Vec::new();
            put_frame(&mut bytes, &[1u8; 40]).unwrap();
            // 11 pieces, 100 ms apart: longer than `idle` in all.
            for piece in bytes.chunks(4) {
                tx.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx
        });
        assert_eq!(frames.next().await.unwrap().unwrap()[0].len(), 40);
        let _open = writer.await.unwrap();
        assert_eq!(frames.next().await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_an_error() {
        let mut bytes = Vec::new();
        put_frame(&mut bytes, b"whole").unwrap();
        bytes.extend_from_slice(&10u32.to_be_bytes());
        bytes.extend_from_slice(b"half");
        let mut frames = Frames::new(&bytes[..]);
        assert_eq!(frames.next().await.unwrap().unwrap().len(), 1);
        assert_eq!(frames.next().await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
