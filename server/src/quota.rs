//! etcd's backend quota estimate: what a write adds to the backend. Over
//! quota, a write that adds something raises the NOSPACE alarm and is
//! refused (before it is proposed), and while NOSPACE is active the applier
//! refuses such writes too; deletes, compactions and reads go on.

use crate::proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
use crate::proto::ferrocdpb::internal_request::Request;

/// Rough backend cost of one key beyond its bytes (etcd's `kvOverhead`).
const KV_OVERHEAD: u64 = 256;
/// etcd's cost of a lease (`leaseOverhead`).
const LEASE_OVERHEAD: u64 = 64;

/// The estimated bytes `request` adds to the backend; 0 for a write that
/// adds nothing (the quota never refuses those).
pub fn cost(request: &Request) -> u64 {
    match request {
        Request::Put(p) => put_cost(p),
        Request::Txn(t) => txn_cost(t),
        Request::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

fn put_cost(p: &PutRequest) -> u64 {
    KV_OVERHEAD + (p.key.len() + p.value.len()) as u64
}

/// As etcd: the puts of the costlier branch; nested txns count nothing.
fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest};

    fn put(key: &str, value: &str) -> RequestOp {
        let p = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
        RequestOp { request: Some(request_op::Request::RequestPut(p)) }
    }

    #[test]
    fn costs_are_etcds_estimates() {
        assert_eq!(
            cost(&Request::Put(PutRequest { key: b"k".to_vec(), value: b"vv".to_vec(), ..Default::default() })),
            259
        );
        assert_eq!(cost(&Request::LeaseGrant(LeaseGrantRequest::default())), 64);
        assert_eq!(cost(&Request::DeleteRange(DeleteRangeRequest::default())), 0);
        // The costlier branch: two puts on success, one bigger one on failure.
        let t = TxnRequest {
            success: vec![put("a", "1"), put("b", "2")],
            failure: vec![put("c", "x".repeat(300).as_str())],
            ..Default::default()
        };
        assert_eq!(cost(&Request::Txn(t)), 256 + 301);
        // Puts only inside a nested txn count nothing, as in etcd.
        let nested = TxnRequest { success: vec![put("a", "1")], ..Default::default() };
        let op = RequestOp { request: Some(request_op::Request::RequestTxn(nested)) };
        assert_eq!(cost(&Request::Txn(TxnRequest { success: vec![op], ..Default::default() })), 0);
    }
}
