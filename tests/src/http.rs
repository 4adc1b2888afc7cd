//! A minimal HTTP/1.1 client for the servers' plain HTTP endpoints, and a
//! reader of the Prometheus text they serve on `/metrics`.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET over a plain socket: (status code, body). Panics on any failure (for
/// tests; see `try_http_get`).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).await.expect("GET")
}

/// GET over a plain socket: (status code, body).
pub async fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))?;
    Ok((code, buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}

/// Prometheus text: sample name (with labels) -> value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}
