//! ferrocd: an etcd-compatible, strongly consistent key-value server.

pub mod alarm;
pub mod api;
pub mod apply;
pub mod auth;
pub mod batched_io;
pub mod bootstrap;
pub mod compactor;
pub mod config;
pub mod embed;
pub mod error;
pub mod http;
pub mod ids;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod proto;
pub mod quota;
pub mod raftnode;
pub mod server;
pub mod snap;
pub mod wait;
pub mod wal;
pub mod watch;
