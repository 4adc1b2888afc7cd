//! etcd's KV semantics over the MVCC store: Range options, Put, DeleteRange
//! and Txn. A txn is all-or-nothing: its compares are evaluated and its
//! requests checked before anything is written.

use std::cmp::Ordering;

use crate::error::EtcdError;
use crate::mvcc::{KeyRange, KvRead, RangeOptions, ReadTxn, TxnWrite};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

pub fn execute_range(r: &impl KvRead, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let sorted = req.sort_order != SortOrder::None as i32;
    // Sorting and filtering need every key; otherwise fetch one beyond the
    // limit to learn whether there is more.
    let limit = if sorted || filtered || req.limit <= 0 { 0 } else { req.limit as usize + 1 };
    let res = r.range(
        KeyRange::new(&req.key, &req.range_end),
        RangeOptions { limit, rev: req.revision, count_only: req.count_only },
    )?;
    let mut kvs = res.kvs;
    if filtered {
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
    }
    let mut order = req.sort_order;
    if req.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
        order = SortOrder::Ascend as i32;
    }
    let by_target = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key) {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    // Stable sorts over key-ordered input: equal elements stay in key order.
    // (etcd's order of equal elements depends on the Go version it was built with.)
    if order == SortOrder::Ascend as i32 {
        kvs.sort_by(by_target);
    } else if order == SortOrder::Descend as i32 {
        kvs.sort_by(|a, b| by_target(b, a));
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse { header: header(res.rev), kvs, more, count: res.count as i64 })
}

fn check_put(t: &TxnWrite<'_, '_>, req: &PutRequest) -> Result<(), EtcdError> {
    if (req.ignore_value || req.ignore_lease) && !t.exists(&req.key) {
        return Err(EtcdError::KeyNotFound);
    }
    // As etcd: a lease given is checked even when ignore_lease is set.
    if req.lease != 0 && !t.lease_exists(req.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

pub fn put(t: &mut TxnWrite<'_, '_>, req: &PutRequest) -> Result<PutResponse, EtcdError> {
    check_put(t, req)?;
    // The old value is read from the backend only when the request needs it.
    let prev = if req.prev_kv || req.ignore_value { t.get(&req.key)? } else { None };
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => req.value.clone(),
    };
    let lease = if req.ignore_lease { t.lease_of(&req.key) } else { req.lease };
    t.put(&req.key, value, lease);
    Ok(PutResponse { header: header(t.rev()), prev_kv: if req.prev_kv { prev } else { None } })
}

pub fn delete_range(t: &mut TxnWrite<'_, '_>, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
    let prev_kvs = t.delete_range(KeyRange::new(&req.key, &req.range_end))?;
    Ok(DeleteRangeResponse {
        header: header(t.rev()),
        deleted: prev_kvs.len() as i64,
        prev_kvs: if req.prev_kv { prev_kvs } else { Vec::new() },
    })
}

/// What a txn runs against: a write txn, or for a txn that only reads, a
/// read view (so such txns run beside each other and the applier).
pub trait TxnTarget: KvRead {
    fn rev(&self) -> i64;
    fn compact_rev(&self) -> i64;
    fn check_put(&self, req: &PutRequest) -> Result<(), EtcdError>;
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError>;
    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError>;
}

impl TxnTarget for TxnWrite<'_, '_> {
    fn rev(&self) -> i64 {
        TxnWrite::rev(self)
    }

    fn compact_rev(&self) -> i64 {
        TxnWrite::compact_rev(self)
    }

    fn check_put(&self, req: &PutRequest) -> Result<(), EtcdError> {
        check_put(self, req)
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        put(self, req)
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
        delete_range(self, req)
    }
}

/// A read view takes only txns that `is_txn_read_only` lets through; a
/// write reaching it is a bug, refused rather than lost.
fn read_only() -> EtcdError {
    EtcdError::Internal("a write in a txn run as read-only".into())
}

impl TxnTarget for ReadTxn<'_> {
    fn rev(&self) -> i64 {
        ReadTxn::rev(self)
    }

    fn compact_rev(&self) -> i64 {
        ReadTxn::compact_rev(self)
    }

    fn check_put(&self, _: &PutRequest) -> Result<(), EtcdError> {
        Err(read_only())
    }

    fn put(&mut self, _: &PutRequest) -> Result<PutResponse, EtcdError> {
        Err(read_only())
    }

    fn delete_range(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
        Err(read_only())
    }
}

/// Runs a txn: compares (of nested txns too) are evaluated against the state
/// before the txn, the chosen branches are checked, then executed in order.
pub fn execute_txn<T: TxnTarget>(t: &mut T, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
    let mut path = Vec::new();
    compare_path(t, req, &mut path)?;
    check_branch(t, req, &path, &mut 0, Check::Puts)?;
    check_branch(t, req, &path, &mut 0, Check::Ranges)?;
    let mut resp = run_branch(t, req, &path, &mut 0)?;
    resp.header = header(t.rev());
    Ok(resp)
}

fn compare_path(t: &impl KvRead, req: &TxnRequest, path: &mut Vec<bool>) -> Result<(), EtcdError> {
    let mut ok = true;
    for c in &req.compare {
        if !compare(t, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in branch(req, ok) {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            compare_path(t, nested, path)?;
        }
    }
    Ok(())
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// Which requests one checking pass looks at.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    Puts,
    Ranges,
}

/// Checks the requests of the branches the txn will take: every put in the
/// whole tree first, then every range, as etcd does (so with several faults
/// the error reported is etcd's).
fn check_branch<T: TxnTarget>(
    t: &T,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    pass: Check,
) -> Result<(), EtcdError> {
    let ok = path[*pos];
    *pos += 1;
    for op in branch(req, ok) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) if pass == Check::Ranges => {
                if r.revision > t.rev() {
                    return Err(EtcdError::FutureRev);
                }
                if r.revision > 0 && r.revision < t.compact_rev() {
                    return Err(EtcdError::Compacted);
                }
            }
            Some(request_op::Request::RequestPut(p)) if pass == Check::Puts => {
                t.check_put(p)?;
            }
            Some(request_op::Request::RequestTxn(nested)) => check_branch(t, nested, path, pos, pass)?,
            _ => {}
        }
    }
    Ok(())
}

fn run_branch<T: TxnTarget>(
    t: &mut T,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, EtcdError> {
    let succeeded = path[*pos];
    *pos += 1;
    let mut responses = Vec::new();
    for op in branch(req, succeeded) {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => response_op::Response::ResponseRange(execute_range(t, r)?),
            Some(request_op::Request::RequestPut(p)) => response_op::Response::ResponsePut(t.put(p)?),
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(t.delete_range(d)?)
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                response_op::Response::ResponseTxn(run_branch(t, nested, path, pos)?)
            }
            None => continue,
        };
        responses.push(ResponseOp { response: Some(response) });
    }
    // The caller sets the outer header; etcd leaves a nested txn's at zero.
    Ok(TxnResponse { header: Some(ResponseHeader::default()), succeeded, responses })
}

fn compare(t: &impl KvRead, c: &Compare) -> Result<bool, EtcdError> {
    let res = t.range(KeyRange::new(&c.key, &c.range_end), RangeOptions::default())?;
    if res.kvs.is_empty() {
        // A value compare on a missing key always fails; other targets
        // compare against zero values.
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(res.kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let u = c.target_union.as_ref();
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match u {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(target @ CompareTarget::Create) => kv.create_revision.cmp(&union_int(u, target)),
        Ok(target @ CompareTarget::Mod) => kv.mod_revision.cmp(&union_int(u, target)),
        Ok(target @ CompareTarget::Version) => kv.version.cmp(&union_int(u, target)),
        Ok(target @ CompareTarget::Lease) => kv.lease.cmp(&union_int(u, target)),
        // etcd compares nothing for an unknown target: equal.
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        // etcd lets an unknown result pass.
        Err(_) => true,
    }
}

/// The compared number, or 0 when the union holds another target's field.
fn union_int(u: Option<&TargetUnion>, target: CompareTarget) -> i64 {
    match (u, target) {
        (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create)
        | (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod)
        | (Some(TargetUnion::Version(v)), CompareTarget::Version)
        | (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
        _ => 0,
    }
}

fn any_op(req: &TxnRequest, pred: &dyn Fn(&request_op::Request) -> bool) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .filter_map(|op| op.request.as_ref())
        .any(|r| pred(r) || matches!(r, request_op::Request::RequestTxn(nested) if any_op(nested, pred)))
}

/// A txn with no put or delete anywhere is served without raft.
pub fn is_txn_read_only(req: &TxnRequest) -> bool {
    !any_op(req, &|r| matches!(r, request_op::Request::RequestPut(_) | request_op::Request::RequestDeleteRange(_)))
}

/// A read-only txn whose ranges are all serializable needs no read barrier.
pub fn is_txn_serializable(req: &TxnRequest) -> bool {
    !any_op(req, &|r| matches!(r, request_op::Request::RequestRange(range) if !range.serializable))
}
