//! go-grpc-prometheus's server metrics, which etcd exports: calls started
//! and handled by code, messages received and sent, by type, service and
//! method. Counted on the HTTP/2 bodies, so every service is covered alike.

use std::sync::Arc;

use crate::metrics::Metrics;

/// How a method streams, for the `grpc_type` label.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => "server_stream",
        _ => "unary",
    }
}

/// grpc-go's names of the status codes (the `grpc_code` label).
fn code_name(code: &[u8]) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .and_then(|i| NAMES.get(i))
        .unwrap_or(&"Unknown")
}

/// Counts gRPC calls started and handled (by final status code) and the
/// messages each way, as go-grpc-prometheus does for etcd. The code is in
/// the headers of an error-only response, else in the trailers at the end
/// of the body.
pub async fn record(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let grpc = req.headers().get("content-type").is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    let call = req.uri().path().trim_start_matches('/').split_once('/').map(|(s, m)| (s.to_string(), m.to_string()));
    let (Some((service, method)), true) = (call, grpc) else {
        return next.run(req).await;
    };
    let kind = grpc_type(&service, &method);
    let labels = [kind, service.as_str(), method.as_str()];
    metrics.grpc_started.with_label_values(&labels).inc();
    let (received, sent) =
        (metrics.grpc_msg_received.with_label_values(&labels), metrics.grpc_msg_sent.with_label_values(&labels));
    let (parts, body) = req.into_parts();
    let mut inbound = MessageCounter::default();
    let body = http_body_util::BodyExt::map_frame(body, move |frame| {
        if let Some(data) = frame.data_ref() {
            received.inc_by(inbound.feed(data));
        }
        frame
    });
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::new(body));
    let record = move |code: &[u8]| {
        metrics.grpc_handled.with_label_values(&[kind, &service, &method, code_name(code)]).inc();
    };
    let resp = next.run(req).await;
    if let Some(code) = resp.headers().get("grpc-status") {
        record(code.as_bytes());
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let mut outbound = MessageCounter::default();
    let body = http_body_util::BodyExt::map_frame(body, move |frame| {
        if let Some(data) = frame.data_ref() {
            sent.inc_by(outbound.feed(data));
        }
        if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
            record(code.as_bytes());
        }
        frame
    });
    axum::response::Response::from_parts(parts, axum::body::Body::new(body))
}

/// Counts the length-prefixed gRPC messages (a flag byte, a 4-byte length,
/// the payload) in a body, whatever frames carry them.
#[derive(Default)]
struct MessageCounter {
    header: [u8; 5],
    have: usize,
    /// Payload bytes of the current message still to pass.
    skip: usize,
}

impl MessageCounter {
    /// The messages whose header ends in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (self.header.len() - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == self.header.len() {
                messages += 1;
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                self.skip = len as usize;
                self.have = 0;
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn counts_messages_across_any_framing() {
        let stream: Vec<u8> = [message(b"hello"), message(b""), message(&[7; 300])].concat();
        assert_eq!(MessageCounter::default().feed(&stream), 3);
        for split in [1, 2, 3, 5, 7, 64] {
            let mut c = MessageCounter::default();
            let total: u64 = stream.chunks(split).map(|chunk| c.feed(chunk)).sum();
            assert_eq!(total, 3, "chunks of {split}");
        }
    }
}
