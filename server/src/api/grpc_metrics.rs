//! go-grpc-prometheus's server metrics, which etcd exports: calls started
//! and handled by code, messages received and sent, by type, service and
//! method. The methods of the client API are listed at start, and those
//! etcd registers with go-grpc-prometheus get their counters then, at zero
//! (as go-grpc-prometheus pre-registers a server's methods), so that a call
//! finds them by its path instead of building label values; paths
//! that are no method of the API are not counted (grpc-go counts only
//! registered methods). Messages are counted on the HTTP/2 bodies, so every
//! service is covered alike.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prometheus::IntCounter;

use crate::metrics::Metrics;

// CLIENT_METHODS: (service, method, grpc_type) of every client API method,
// from the protos (build.rs).
include!(concat!(env!("OUT_DIR"), "/client_methods.rs"));

/// grpc-go's names of the status codes (the `grpc_code` label), by code.
const CODE_NAMES: [&str; 17] = [
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
const UNKNOWN: usize = 2;

/// One method's counters.
pub struct MethodCounters {
    pub started: IntCounter,
    pub received: IntCounter,
    pub sent: IntCounter,
    /// By status code, as `CODE_NAMES`.
    handled: Vec<IntCounter>,
}

impl MethodCounters {
    /// The call ended with the `grpc-status` value `code`.
    pub fn handled(&self, code: &[u8]) {
        let i = std::str::from_utf8(code)
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .filter(|i| *i < CODE_NAMES.len())
            .unwrap_or(UNKNOWN);
        self.handled[i].inc();
    }
}

/// The services whose methods have their counters from the start. etcd
/// registers go-grpc-prometheus with the services of `etcdserverpb` only;
/// Lock and Election come later, so their series appear once called.
const FROM_THE_START: &str = "etcdserverpb.";

/// One client API method: its labels, and its counters once made.
pub struct Method {
    labels: [&'static str; 3],
    metrics: Arc<Metrics>,
    counters: OnceLock<MethodCounters>,
}

impl Method {
    pub fn counters(&self) -> &MethodCounters {
        self.counters.get_or_init(|| {
            let (m, labels) = (&self.metrics, &self.labels);
            let [kind, service, method] = *labels;
            MethodCounters {
                started: m.grpc_started.with_label_values(labels),
                received: m.grpc_msg_received.with_label_values(labels),
                sent: m.grpc_msg_sent.with_label_values(labels),
                handled: CODE_NAMES
                    .iter()
                    .map(|code| m.grpc_handled.with_label_values(&[kind, service, method, code]))
                    .collect(),
            }
        })
    }
}

/// Every client API method, by path (`/package.Service/Method`).
pub struct GrpcMetrics {
    by_path: HashMap<String, Arc<Method>>,
}

impl GrpcMetrics {
    pub fn new(metrics: &Arc<Metrics>) -> GrpcMetrics {
        let by_path = CLIENT_METHODS
            .iter()
            .map(|&(service, method, kind)| {
                let m = Method { labels: [kind, service, method], metrics: metrics.clone(), counters: OnceLock::new() };
                if service.starts_with(FROM_THE_START) {
                    m.counters();
                }
                (format!("/{service}/{method}"), Arc::new(m))
            })
            .collect();
        GrpcMetrics { by_path }
    }

    /// The method at `path`, if it is one of the API's.
    pub fn method(&self, path: &str) -> Option<Arc<Method>> {
        self.by_path.get(path).cloned()
    }
}

/// Counts the length-prefixed gRPC messages (a flag byte, a 4-byte length,
/// the payload) in a body, whatever frames carry them.
#[derive(Default)]
pub struct MessageCounter {
    header: [u8; 5],
    have: usize,
    /// Payload bytes of the current message still to pass.
    skip: usize,
}

impl MessageCounter {
    /// The messages whose header ends in `data`.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
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
