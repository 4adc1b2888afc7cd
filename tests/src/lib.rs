//! Harness for ferrocd's multi-process tests: finds the binaries, hands out
//! loopback ports, starts, kills and restarts members (ferrocd or a real
//! etcd, which take the same flags) and runs etcdctl; and the benchmark
//! program `ferrocd-bench`.

pub mod bench;
pub mod certs;
pub mod cluster;
pub mod command;
pub mod cpus;
pub mod daemon;
pub mod etcdctl;
pub mod http;
pub mod kube;
pub mod linearizability;
pub mod member;
pub mod netns;
pub mod operator;
pub mod ports;
pub mod testbed;
pub mod tools;
pub mod workload;
