//! A lean unary gRPC caller for the request-per-sample workloads: etcd's
//! own messages (the server crate's generated types) framed as gRPC on a
//! plain HTTP/2 connection (the `h2` crate), with none of a full client's
//! machinery (tower buffer and balancer, per-request body task). Servers
//! cannot tell it from any other gRPC client.
//!
//! Why: the load generator shares the machine with the servers it
//! measures. Through the `etcd-client` crate it spent about 50 µs of CPU
//! per request, as much as a server spends answering one, so on two vCPUs
//! its share, the same for both servers, pulled every ratio towards 1;
//! this caller spends about half of that.
//!
//! A connection is not made again once it fails: every later call on it
//! fails at once (and counts as an error).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// One HTTP/2 connection to one endpoint; clones share it (each call is a
/// stream on it).
#[derive(Clone)]
pub struct Connection {
    send: h2::client::SendRequest<Bytes>,
    /// `scheme://host:port`, the prefix of every request's URI.
    base: String,
}

impl Connection {
    /// Connects to `endpoint` (`http://` or `https://host:port`, or
    /// `host:port`, which means https when `tls` is given, as etcd clients
    /// take it); `tls` must offer ALPN `h2`.
    pub async fn open(endpoint: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Connection, String> {
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?;
        // The TLS settings to connect with, if the connection is https.
        let tls = match (uri.scheme_str(), tls) {
            (Some("https"), None) => return Err(format!("{endpoint}: https without TLS settings")),
            (Some("https") | None, tls) => tls,
            _ => None,
        };
        let authority = uri.authority().ok_or_else(|| format!("endpoint {endpoint:?} has no host"))?;
        let port = authority.port_u16().ok_or_else(|| format!("endpoint {endpoint:?} has no port"))?;
        let tcp = tokio::net::TcpStream::connect(format!("{}:{port}", authority.host()))
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let send = match tls {
            Some(config) => {
                let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
                let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| format!("{endpoint}: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("{endpoint}: {e}"))?;
                handshake(stream).await?
            }
            None => handshake(tcp).await?,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Connection { send, base: format!("{scheme}://{authority}") })
    }

    /// Calls method `path` (e.g. `/etcdserverpb.KV/Range`) with `req`; the
    /// answer, or the gRPC status code and message.
    pub async fn unary<Q: Message, R: Message + Default>(&mut self, path: &str, req: &Q) -> Result<R, String> {
        let len = req.encoded_len();
        let mut frame = BytesMut::with_capacity(5 + len);
        frame.put_u8(0);
        frame.put_u32(len as u32);
        req.encode(&mut frame).map_err(|e| e.to_string())?;
        let request = http::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await.map_err(|e| e.to_string())?;
        let (response, mut body) = self.send.send_request(request, false).map_err(|e| e.to_string())?;
        body.send_data(frame.freeze(), true).map_err(|e| e.to_string())?;
        let response = response.await.map_err(|e| e.to_string())?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        // A call that fails at once answers with headers only; a unary
        // call that succeeds never does (it has a message).
        if response.headers().contains_key("grpc-status") {
            return Err(status(response.headers()).unwrap_or_else(|| "an answer without a message".into()));
        }
        let mut body = response.into_body();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(|e| e.to_string())?.unwrap_or_default();
        match status(&trailers) {
            Some(failed) => Err(failed),
            None if trailers.contains_key("grpc-status") => decode(data.freeze()),
            None => Err("the answer has no grpc-status".into()),
        }
    }
}

async fn handshake<T>(io: T) -> Result<h2::client::SendRequest<Bytes>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // HTTP/2 windows as hyper's client (so tonic's and etcd-client's) opens
    // them, so large answers need no more window updates than there.
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// A non-OK `grpc-status` in `headers`, as `code: message` (the message
/// percent-decoded, as gRPC sends it).
fn status(headers: &http::HeaderMap) -> Option<String> {
    let code = headers.get("grpc-status")?.to_str().unwrap_or("?");
    if code == "0" {
        return None;
    }
    let message =
        headers.get("grpc-message").map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy());
    Some(format!("gRPC status {code}: {}", message.unwrap_or_default()))
}

/// The one message of a unary answer (uncompressed, length-prefixed).
fn decode<R: Message + Default>(mut data: Bytes) -> Result<R, String> {
    if data.len() < 5 {
        return Err(format!("a {}-byte answer has no message", data.len()));
    }
    if data.get_u8() != 0 {
        return Err("a compressed answer (none was asked for)".into());
    }
    let len = data.get_u32() as usize;
    if data.len() != len {
        return Err(format!("the answer frames {len} bytes but carries {}", data.len()));
    }
    R::decode(data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocd::proto::etcdserverpb::RangeResponse;

    #[test]
    fn answers_decode_only_whole_uncompressed_frames() {
        let msg = RangeResponse { count: 3, ..Default::default() };
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(msg.encoded_len() as u32);
        msg.encode(&mut frame).unwrap();
        let frame = frame.freeze();
        assert_eq!(decode::<RangeResponse>(frame.clone()).unwrap().count, 3);
        assert!(decode::<RangeResponse>(frame.slice(..frame.len() - 1)).is_err(), "cut short");
        let mut compressed = frame.to_vec();
        compressed[0] = 1;
        assert!(decode::<RangeResponse>(Bytes::from(compressed)).is_err());
        assert!(decode::<RangeResponse>(Bytes::from_static(&[0, 0])).is_err());
    }

    #[test]
    fn only_a_non_zero_status_is_a_failure() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(status(&h), None);
        h.insert("grpc-status", "9".parse().unwrap());
        h.insert("grpc-message", "etcdserver:%20no%20leader".parse().unwrap());
        assert_eq!(status(&h).unwrap(), "gRPC status 9: etcdserver: no leader");
    }
}
