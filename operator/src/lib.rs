//! ferrocd-operator: runs ferrocd clusters on Kubernetes from `EtcdCluster`
//! resources. observe (Kubernetes objects and the cluster's own membership)
//! → plan (a pure function choosing the one next safe step) → act (one
//! Kubernetes write or one membership call) → status and an Event.

pub mod act;
pub mod controller;
pub mod crd;
pub mod leader_election;
pub mod members;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod plan;
pub mod resources;
pub mod status;
pub mod tls;
