//! Dialing a member (a peer, or a client URL for `ferrocdutl`): TCP, then
//! TLS when the URL is `https://`, verifying the member's certificate for
//! the URL's host.

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

/// Where a dialer's TLS configuration comes from: made again when its
/// files change, or fixed.
pub trait ClientTls: Send + Sync {
    fn current(&self) -> Arc<rustls::ClientConfig>;
}

impl ClientTls for Reloading<rustls::ClientConfig> {
    fn current(&self) -> Arc<rustls::ClientConfig> {
        Reloading::current(self)
    }
}

impl ClientTls for Arc<rustls::ClientConfig> {
    fn current(&self) -> Arc<rustls::ClientConfig> {
        self.clone()
    }
}

/// One URL's way in: tonic's endpoint gets the URL as `http://` (tonic
/// itself has no TLS here) and this connector adds TLS.
#[derive(Clone)]
pub struct Connector {
    tls: Option<(Arc<dyn ClientTls>, ServerName<'static>)>,
    timeout: Duration,
}

impl Connector {
    /// For `url`, and the URL tonic should be given. An `https://` URL
    /// needs a TLS configuration.
    pub fn for_url(
        url: &str,
        tls: Option<Arc<dyn ClientTls>>,
        timeout: Duration,
    ) -> Result<(Connector, String), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
        match parsed.scheme() {
            "http" => Ok((Connector { tls: None, timeout }, url.to_string())),
            "https" => {
                let tls = tls.ok_or_else(|| {
                    format!("{url} is https, but no TLS is configured to reach it (for peers: --peer-cert-file or --peer-auto-tls)")
                })?;
                let host = parsed.host_str().ok_or_else(|| format!("bad URL {url:?}: no host"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_string()).map_err(|e| format!("bad URL {url:?}: {e}"))?;
                let mut plain = parsed.clone();
                let _ = plain.set_scheme("http");
                if parsed.port().is_none() {
                    let _ = plain.set_port(Some(443));
                }
                let plain = plain.to_string();
                Ok((Connector { tls: Some((tls, name)), timeout }, plain))
            }
            other => Err(format!("bad URL {url:?}: unsupported scheme {other:?}")),
        }
    }
}

impl Connector {
    /// Connects to `uri` (the URL `for_url` gave): TCP, then TLS if wanted.
    pub async fn dial(&self, uri: &http::Uri) -> io::Result<Conn> {
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let dial = async {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let info = ConnInfo { remote: tcp.peer_addr().ok(), common_name: None };
            match &self.tls {
                None => Ok(Conn::plain(tcp, info)),
                Some((config, name)) => {
                    let tls = tokio_rustls::TlsConnector::from(config.current()).connect(name.clone(), tcp).await?;
                    Ok(Conn::tls(tls, info))
                }
            }
        };
        match tokio::time::timeout(self.timeout, dial).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Conn>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.dial(&uri).await.map(TokioIo::new) })
    }
}
