//! `ferrocd-bench`: etcd-style load generator and the side-by-side
//! comparisons of ferrocd with a real etcd (speed, backend space).

pub mod cli;
pub mod compare;
pub mod disk;
pub mod grpc;
pub mod kube;
pub mod space;
pub mod stats;
pub mod workload;
