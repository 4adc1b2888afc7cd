//! Which requests a caller may make, as etcd decides it: reads need READ on
//! every key they look at (compares and `prev_kv` included), writes need
//! WRITE, the root role may do anything, and a request checked against an
//! older auth revision is refused so that the client retries under the
//! current rules.

use super::perms::{allows, covers};
use super::{AuthStore, State, ROOT_ROLE};
use crate::error::EtcdError;
use crate::proto::authpb::permission::Type;
use crate::proto::authpb::User;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};
use crate::proto::ferrocdpb::AuthHeader;

/// The root role may do anything.
pub(super) fn is_root(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT_ROLE)
}

/// The keys attached to a lease.
pub type LeaseKeys<'a> = dyn Fn(i64) -> Vec<Vec<u8>> + 'a;

impl State {
    /// The caller's user, when auth is on; `None` when anything goes.
    fn user_of(&self, who: &AuthHeader) -> Result<Option<&User>, EtcdError> {
        if !self.enabled {
            return Ok(None);
        }
        // No user: the request came without a token (or is a log-in).
        if who.auth_revision == 0 || who.username.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        if who.auth_revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        self.users.get(&who.username).map(Some).ok_or(EtcdError::PermissionDenied)
    }

    fn permitted(&self, who: &AuthHeader, key: &[u8], range_end: &[u8], wanted: Type) -> Result<(), EtcdError> {
        let Some(user) = self.user_of(who)? else {
            return Ok(());
        };
        if is_root(user) {
            return Ok(());
        }
        let perms = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| allows(p.perm_type, wanted));
        if covers(perms, key, range_end) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's IsAdminPermitted: a known user holding the root role.
    pub(super) fn admin(&self, who: &AuthHeader) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if who.username.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        let user = self.users.get(&who.username).ok_or(EtcdError::UserNotFound)?;
        if is_root(user) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// A put; with a lease, the caller must also be able to write every key
    /// already on it (else it could attach a key it could never revoke).
    fn put(&self, who: &AuthHeader, r: &PutRequest, lease_keys: &LeaseKeys<'_>) -> Result<(), EtcdError> {
        self.permitted(who, &r.key, &[], Type::Write)?;
        if r.lease != 0 {
            self.keys(who, &lease_keys(r.lease), Type::Write)?;
        }
        if r.prev_kv {
            self.permitted(who, &r.key, &[], Type::Read)?;
        }
        Ok(())
    }

    fn keys(&self, who: &AuthHeader, keys: &[Vec<u8>], wanted: Type) -> Result<(), EtcdError> {
        keys.iter().try_for_each(|k| self.permitted(who, k, &[], wanted))
    }

    fn delete(&self, who: &AuthHeader, r: &DeleteRangeRequest) -> Result<(), EtcdError> {
        self.permitted(who, &r.key, &r.range_end, Type::Write)?;
        if r.prev_kv {
            self.permitted(who, &r.key, &r.range_end, Type::Read)?;
        }
        Ok(())
    }

    fn txn(&self, who: &AuthHeader, r: &TxnRequest, lease_keys: &LeaseKeys<'_>) -> Result<(), EtcdError> {
        for c in &r.compare {
            self.permitted(who, &c.key, &c.range_end, Type::Read)?;
        }
        for op in r.success.iter().chain(&r.failure).filter_map(|op| op.request.as_ref()) {
            match op {
                Op::RequestRange(q) => self.permitted(who, &q.key, &q.range_end, Type::Read)?,
                Op::RequestPut(p) => self.put(who, p, lease_keys)?,
                Op::RequestDeleteRange(d) => self.delete(who, d)?,
                Op::RequestTxn(t) => self.txn(who, t, lease_keys)?,
            }
        }
        Ok(())
    }
}

impl AuthStore {
    /// etcd's requireAuthInfo: with auth on, the caller must be somebody.
    pub fn check_identity(&self, who: &AuthHeader) -> Result<(), EtcdError> {
        if self.is_enabled() && who.username.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        Ok(())
    }

    /// READ on `[key, range_end)`: ranges, watches.
    pub fn check_read(&self, who: &AuthHeader, key: &[u8], range_end: &[u8]) -> Result<(), EtcdError> {
        self.state.read().permitted(who, key, range_end, Type::Read)
    }

    /// `wanted` access to each of `keys` (a lease's keys).
    pub fn check_keys(&self, who: &AuthHeader, keys: &[Vec<u8>], wanted: Type) -> Result<(), EtcdError> {
        self.state.read().keys(who, keys, wanted)
    }

    /// The root role: user and role management, maintenance, compaction.
    pub fn check_admin(&self, who: &AuthHeader) -> Result<(), EtcdError> {
        self.state.read().admin(who)
    }

    pub fn check_put(&self, who: &AuthHeader, r: &PutRequest, lease_keys: &LeaseKeys<'_>) -> Result<(), EtcdError> {
        self.state.read().put(who, r, lease_keys)
    }

    pub fn check_delete(&self, who: &AuthHeader, r: &DeleteRangeRequest) -> Result<(), EtcdError> {
        self.state.read().delete(who, r)
    }

    /// Every compare and every operation of both branches.
    pub fn check_txn(&self, who: &AuthHeader, r: &TxnRequest, lease_keys: &LeaseKeys<'_>) -> Result<(), EtcdError> {
        self.state.read().txn(who, r, lease_keys)
    }
}
