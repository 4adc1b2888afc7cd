//! Accepted connections of one listener, plain or TLS. Handshakes run on
//! tasks of their own, so a slow or hostile client never holds up the
//! accept loop; a refused handshake is logged with the client's address and
//! the reason, and nobody else notices.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::stream::{Conn, ConnInfo};
use super::{files, Reloading};

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 128;
/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// The connections of one listener, handshaken when `tls` is given.
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

/// Starts accepting on `listener` (until the `Incoming` is dropped).
pub fn incoming(listener: TcpListener, tls: Option<Arc<Reloading<rustls::ServerConfig>>>) -> Incoming {
    let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(accept_loop(listener, tls, tx));
    Incoming { rx, local }
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<Reloading<rustls::ServerConfig>>>, tx: mpsc::Sender<Conn>) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let info = ConnInfo { remote: Some(remote), common_name: None };
        match &tls {
            None => {
                if tx.send(Conn::plain(tcp, info)).await.is_err() {
                    return;
                }
            }
            Some(reloading) => {
                let (config, keep_cn, tx) = (reloading.current(), reloading.names_users(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, config, keep_cn, info)).await {
                        Ok(Ok(conn)) => {
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(Refusal::Closed)) => {
                            // TCP health checks connect and close: not worth a warning.
                            tracing::debug!(remote = %remote, "connection closed before a TLS handshake")
                        }
                        Ok(Err(Refusal::Because(reason))) => {
                            tracing::warn!(remote = %remote, reason, "rejected connection")
                        }
                        Err(_) => tracing::warn!(remote = %remote, "rejected connection: TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Why a connection was not taken.
enum Refusal {
    /// It closed without sending anything (a TCP health check).
    Closed,
    Because(String),
}

async fn handshake(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    keep_cn: bool,
    mut info: ConnInfo,
) -> Result<Conn, Refusal> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Err(Refusal::Closed),
        Ok(_) if first[0] != TLS_HANDSHAKE => {
            // As Go's server does, tell an HTTP/1 client what went wrong
            // (its request read first: closing on unread bytes resets the
            // connection before the answer arrives).
            if first[0].is_ascii_alphabetic() {
                let mut request = [0u8; 4096];
                let _ = tcp.read(&mut request).await;
                let _ = tcp
                    .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                    .await;
                let _ = tcp.shutdown().await;
            }
            return Err(Refusal::Because("plain text on a TLS port (use https:// and TLS)".into()));
        }
        Ok(_) => {}
        Err(e) => return Err(Refusal::Because(e.to_string())),
    }
    let stream = tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|e| Refusal::Because(format!("TLS handshake failed: {e}")))?;
    if keep_cn {
        info.common_name =
            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(files::common_name).map(Arc::from);
    }
    Ok(Conn::tls(stream, info))
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.info().remote.unwrap_or(self.local);
                (conn, remote)
            }
            // The accept loop ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
