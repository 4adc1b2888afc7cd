//! A minimal HTTP/1.1 client for the servers' plain HTTP endpoints.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET over a plain socket: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    (code, buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}
