//! Dialing a peer: TCP, then TLS when the peer's URL is `https://`,
//! verifying the peer's certificate for the URL's host with the peer CA.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::stream::{Conn, ConnInfo};
use super::Reloading;

/// One peer URL's way in: tonic's endpoint gets the URL as `http://`
/// (tonic itself has no TLS here) and this connector adds TLS.
#[derive(Clone)]
pub struct PeerConnector {
    tls: Option<(Arc<Reloading<rustls::ClientConfig>>, ServerName<'static>)>,
    timeout: Duration,
}

impl PeerConnector {
    /// For `url`, and the URL tonic should be given. An `https://` URL
    /// needs the peer TLS configuration.
    pub fn for_url(
        url: &str,
        tls: Option<&Arc<Reloading<rustls::ClientConfig>>>,
        timeout: Duration,
    ) -> Result<(PeerConnector, String), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("bad peer URL {url:?}: {e}"))?;
        match parsed.scheme() {
            "http" => Ok((PeerConnector { tls: None, timeout }, url.to_string())),
            "https" => {
                let tls = tls.ok_or_else(|| {
                    format!("peer URL {url} is https, but this member has no peer TLS (--peer-cert-file or --peer-auto-tls)")
                })?;
                let host = parsed.host_str().ok_or_else(|| format!("bad peer URL {url:?}: no host"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_string()).map_err(|e| format!("bad peer URL {url:?}: {e}"))?;
                let plain = format!("http{}", &url["https".len()..]);
                Ok((PeerConnector { tls: Some((tls.clone(), name)), timeout }, plain))
            }
            other => Err(format!("bad peer URL {url:?}: unsupported scheme {other:?}")),
        }
    }
}

impl tower_service::Service<http::Uri> for PeerConnector {
    type Response = TokioIo<Conn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Conn>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(80);
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let info = ConnInfo { remote: tcp.peer_addr().ok(), common_name: None };
                match this.tls {
                    None => Ok(Conn::plain(tcp, info)),
                    Some((config, name)) => {
                        let tls = tokio_rustls::TlsConnector::from(config.current()).connect(name, tcp).await?;
                        Ok(Conn::tls(tls, info))
                    }
                }
            };
            match tokio::time::timeout(this.timeout, dial).await {
                Ok(r) => r.map(TokioIo::new),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        })
    }
}
