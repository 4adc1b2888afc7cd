//! Raft snapshots between members: the sender writes the backend's image
//! to a file (the same image Maintenance.Snapshot streams), then streams the
//! raft message and the image in chunks with a CRC-32; the receiver keeps
//! it in a file, checks it, and hands it to the raft node, which installs
//! it off the raft thread's hot path (on the apply thread). Raft hears how
//! each send ended.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Transport;
use crate::proto::ferrocdpb::SnapshotChunk;
use crate::server::EtcdServer;

const CHUNK: usize = 1024 * 1024;

/// Writes the backend's image into the file given; returns its size.
pub type ImageWriter = Arc<dyn Fn(&mut std::fs::File) -> Result<u64, String> + Send + Sync>;

/// Where snapshot images are staged, and how to make one.
pub struct SnapshotSource {
    pub dir: PathBuf,
    pub write_image: ImageWriter,
}

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

fn staging(dir: &std::path::Path, what: &str, peer: u64) -> PathBuf {
    dir.join(format!("{what}-{peer:x}-{}.snapdb.tmp", NEXT_FILE.fetch_add(1, Ordering::Relaxed)))
}

/// Sends a snapshot to `to` and tells raft how it went.
pub(super) async fn send(transport: Arc<Transport>, to: u64, msg: Vec<u8>) {
    let label = format!("{to:x}");
    let started = std::time::Instant::now();
    let result = send_inner(&transport, to, msg).await;
    match &result {
        Ok(size) => {
            tracing::info!(to = %label, bytes = size, "sent a snapshot");
            transport.metrics.snapshot_send_success.with_label_values(&[&label]).inc();
            let took = started.elapsed().as_secs_f64();
            transport.metrics.snapshot_send_seconds.with_label_values(&[&label]).observe(took);
        }
        Err(e) => {
            tracing::warn!(to = %label, error = %e, "sending a snapshot failed");
            transport.metrics.snapshot_send_failures.with_label_values(&[&label]).inc();
        }
    }
    if let Some(node) = transport.node() {
        node.report_snapshot(to, result.is_ok());
    }
}

async fn send_inner(transport: &Transport, to: u64, msg: Vec<u8>) -> Result<u64, String> {
    let source = transport.snapshots.get().ok_or("no snapshot source yet")?;
    let path = staging(&source.dir, "outgoing", to);
    let write = source.write_image.clone();
    let target = path.clone();
    let made = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        write(&mut file)
    })
    .await
    .map_err(|e| e.to_string())?;
    let result = match made {
        Ok(size) => stream_file(transport, to, msg, &path).await.map(|()| size),
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    result
}

async fn stream_file(transport: &Transport, to: u64, msg: Vec<u8>, path: &std::path::Path) -> Result<(), String> {
    let mut client = transport.peer_client(to).map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::open(path).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let producer = async move {
        tx.send(SnapshotChunk { message: msg, ..Default::default() }).await.map_err(|_| "the stream closed")?;
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(|_| "cannot read the image")?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
            let chunk = SnapshotChunk { data: buf[..n].to_vec(), ..Default::default() };
            tx.send(chunk).await.map_err(|_| "the stream closed")?;
        }
        let last = SnapshotChunk { crc: crc.finalize(), last: true, ..Default::default() };
        tx.send(last).await.map_err(|_| "the stream closed")?;
        Ok::<(), &str>(())
    };
    let call = client.snapshot(ReceiverStream::new(rx));
    let (produced, answered) = tokio::join!(producer, call);
    answered.map_err(|s| s.message().to_string())?;
    produced.map_err(str::to_string)
}

/// Takes a snapshot from `from`, checks it and hands it to the raft node.
pub async fn receive(
    server: &EtcdServer,
    from: u64,
    mut stream: tonic::Streaming<SnapshotChunk>,
) -> Result<(), Status> {
    let label = format!("{from:x}");
    let path = staging(&server.snap_dir, "incoming", from);
    let started = std::time::Instant::now();
    let result = receive_into(server, &path, &mut stream).await;
    match &result {
        Ok(()) => {
            server.metrics.snapshot_receive_success.with_label_values(&[&label]).inc();
            let took = started.elapsed().as_secs_f64();
            server.metrics.snapshot_receive_seconds.with_label_values(&[&label]).observe(took);
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            tracing::warn!(from = %label, error = %e.message(), "receiving a snapshot failed");
            server.metrics.snapshot_receive_failures.with_label_values(&[&label]).inc();
        }
    }
    result
}

async fn receive_into(
    server: &EtcdServer,
    path: &std::path::Path,
    stream: &mut tonic::Streaming<SnapshotChunk>,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let (mut message, mut crc, mut whole) = (Vec::new(), crc32fast::Hasher::new(), false);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if !chunk.message.is_empty() {
            message = chunk.message;
        }
        if !chunk.data.is_empty() {
            crc.update(&chunk.data);
            file.write_all(&chunk.data).await.map_err(io)?;
        }
        if chunk.last {
            if chunk.crc != crc.clone().finalize() {
                return Err(Status::data_loss("the snapshot image's CRC-32 does not match"));
            }
            whole = true;
            break;
        }
    }
    if !whole || message.is_empty() {
        return Err(Status::invalid_argument("the snapshot stream ended early"));
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    server.node.step_snapshot(&message, path.to_path_buf())?;
    Ok(())
}
