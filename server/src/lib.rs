//! ferrocd: an etcd-compatible, strongly consistent key-value server.

pub mod config;
pub mod error;
pub mod ids;
pub mod mvcc;
pub mod proto;
pub mod snap;
pub mod wal;
