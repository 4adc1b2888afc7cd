//! Applying lease requests: grant, revoke (its keys deleted in one
//! revision), and checkpoints of remaining TTLs.

use super::all_or_nothing;
use crate::error::EtcdError;
use crate::lease::{Lessor, MAX_LEASE_TTL};
use crate::mvcc::{KeyRange, LeaseRecord, WriteBatch};
use crate::proto::etcdserverpb::{
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, ResponseHeader,
};

fn header(batch: &WriteBatch<'_>) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: batch.current_rev(), ..Default::default() })
}

pub fn grant(
    batch: &mut WriteBatch<'_>,
    lessor: &Lessor,
    r: &LeaseGrantRequest,
) -> Result<LeaseGrantResponse, EtcdError> {
    if r.ttl > MAX_LEASE_TTL {
        return Err(EtcdError::LeaseTtlTooLarge);
    }
    if batch.lease(r.id).is_some() {
        return Err(EtcdError::LeaseExists);
    }
    let ttl = lessor.granted_ttl(r.ttl);
    batch.put_lease(r.id, LeaseRecord { ttl, remaining_ttl: 0 });
    lessor.granted(r.id, ttl);
    Ok(LeaseGrantResponse { header: header(batch), id: r.id, ttl, error: String::new() })
}

pub fn revoke(
    batch: &mut WriteBatch<'_>,
    lessor: &Lessor,
    r: &LeaseRevokeRequest,
) -> Result<LeaseRevokeResponse, EtcdError> {
    if batch.lease(r.id).is_none() {
        return Err(EtcdError::LeaseNotFound);
    }
    let keys = batch.lease_keys(r.id);
    all_or_nothing(batch, |t| {
        for key in &keys {
            t.delete_range(KeyRange::new(key, b""))?;
        }
        Ok(())
    })?;
    batch.remove_lease(r.id);
    lessor.revoked(r.id);
    Ok(LeaseRevokeResponse { header: header(batch) })
}

pub fn checkpoint(batch: &mut WriteBatch<'_>, lessor: &Lessor, r: &LeaseCheckpointRequest) -> LeaseCheckpointResponse {
    for cp in &r.checkpoints {
        if let Some(rec) = batch.lease(cp.id) {
            batch.put_lease(cp.id, LeaseRecord { ttl: rec.ttl, remaining_ttl: cp.remaining_ttl });
            lessor.checkpointed(cp.id, cp.remaining_ttl);
        }
    }
    LeaseCheckpointResponse { header: header(batch) }
}
