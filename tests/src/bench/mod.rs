//! `ferrocd-bench`: etcd-style load generator and the side-by-side
//! comparison of ferrocd with a real etcd.

pub mod cli;
pub mod compare;
pub mod disk;
pub mod stats;
pub mod workload;
