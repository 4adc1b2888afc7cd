//! A raft stream from a peer (the peer port found its preface): the peer is
//! admitted by its header, then every batch of frames read from the socket
//! is stepped into raft at once, on the task that reads the socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::sync::watch;

use super::wire::{self, Frames};
use crate::server::EtcdServer;

/// A dialer keeps its stream alive every second; silent this long (not a
/// byte), it is taken as gone (cut off without a reset).
const SILENCE: Duration = Duration::from_secs(3);

/// Serves one raft stream until it ends or the member stops.
pub async fn serve<S>(server: Arc<EtcdServer>, conn: S, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(conn);
    let mut frames = Frames::with_idle(read, SILENCE);
    let ended = tokio::select! {
        ended = receive(&server, &mut frames, &mut write) => ended,
        _ = stop.wait_for(|stopped| *stopped) => return,
    };
    if let Err(Ended::Refused(reason)) = &ended {
        // A dialer that does not read does not hold this task.
        let _ = tokio::time::timeout(SILENCE, wire::write_frame(&mut write, reason.as_bytes())).await;
    }
    if let Err(e) = ended {
        tracing::debug!(error = %e, "a peer's raft stream ended");
    }
}

#[derive(Debug, thiserror::Error)]
enum Ended {
    /// Told to the dialer before closing.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<tonic::Status> for Ended {
    fn from(refusal: tonic::Status) -> Ended {
        Ended::Refused(refusal.message().to_string())
    }
}

async fn receive<R, W>(server: &EtcdServer, frames: &mut Frames<R>, write: &mut WriteHalf<W>) -> Result<(), Ended>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite,
{
    let theirs = frames.header().await?;
    let from = theirs.from;
    server.transport.header().admit(&theirs, false)?;
    super::service::refuse_removed(server, from)?;
    wire::write_frame(write, &[]).await?;
    let received = server.metrics.peer_received_bytes.with_label_values(&[&format!("{from:x}")]);
    loop {
        let Some(mut batch) = frames.next().await? else {
            return Ok(());
        };
        // Removed while its stream was open: it hears so and stops.
        super::service::refuse_removed(server, from)?;
        let frames_read = batch.len();
        batch.retain(|m| !m.is_empty());
        let keepalive = batch.len() < frames_read;
        received.inc_by(batch.iter().map(|m| m.len() as u64).sum());
        server.node.step(&batch).map_err(|e| Ended::Refused(e.to_string()))?;
        if keepalive {
            wire::write_frame(write, &[]).await?;
        }
    }
}
