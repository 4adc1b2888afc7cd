//! Request checks done before anything reaches raft, as etcd's v3rpc layer
//! does them (same order, same errors).

use std::collections::HashSet;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Size limits and keys first, then overlapping writes in each branch.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: i64) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if ops > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        // A nested txn shares the budget of the txn around it.
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<(), EtcdError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(r)) => check_txn_ops(r, max_ops),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A deleted span, as etcd's check reads it: `[key, end)`, or the single key
/// when `end` is empty. etcd takes an end of "\0" literally here (an empty
/// span), so this does too.
struct Span<'a> {
    key: &'a [u8],
    end: &'a [u8],
}

impl Span<'_> {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.key
        } else {
            self.key <= k && k < self.end
        }
    }
}

/// Rejects a branch that writes one key twice (two puts, or a put inside a
/// deleted span), looking into nested txns, whose then/else branches may
/// share keys since only one of them runs.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<&[u8]>, Vec<Span<'_>>), EtcdError> {
    let mut dels: Vec<Span<'_>> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Span { key: &d.key, end: &d.range_end }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = p.key.as_slice();
        if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::Compare;

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare: vec![], success, failure }
    }

    #[test]
    fn duplicate_keys() {
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), Err(EtcdError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128), Err(EtcdError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![del("a", "b"), del("a", "c")], vec![]), 128), Ok(()));
        let nested = RequestOp { request: Some(Request::RequestTxn(txn(vec![put("x")], vec![put("x")]))) };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![nested, put("x")], vec![]), 128), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn op_counts_and_keys() {
        let many = txn((0..129).map(|i| put(&format!("k{i}"))).collect(), vec![]);
        assert_eq!(check_txn(&many, 128), Err(EtcdError::TooManyOps));
        assert_eq!(check_txn(&many, 129), Ok(()));
        let empty_cmp = TxnRequest { compare: vec![Compare::default()], ..Default::default() };
        assert_eq!(check_txn(&empty_cmp, 128), Err(EtcdError::EmptyKey));
        assert_eq!(check_txn(&txn(vec![put("")], vec![]), 128), Err(EtcdError::EmptyKey));
        assert_eq!(
            check_put(&PutRequest { key: "k".into(), value: "v".into(), ignore_value: true, ..Default::default() }),
            Err(EtcdError::ValueProvided)
        );
    }
}
