//! Authentication and authorization, as etcd's auth store: users with
//! bcrypt-hashed passwords, roles holding key-range permissions, the root
//! role that may do anything, simple tokens, and a revision that moves with
//! every change so that a request checked against old rules is refused when
//! it applies. The store changes only through raft (see `apply`).

mod apply;
mod check;
mod perms;
mod tokens;

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::RwLock;
use prost::Message;

pub use apply::AuthResponse;
pub use check::LeaseKeys;
pub use tokens::SimpleTokens;

use crate::error::EtcdError;
use crate::mvcc::{MvccError, Store, WriteBatch};
use crate::proto::authpb::{Role, User};
use crate::proto::ferrocdpb::{AuthHeader, AuthState};

const META_AUTH: &str = "auth";
pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// The gRPC metadata keys a token may come in (etcd reads both).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// What a request says about who sent it.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub metadata: &'a tonic::metadata::MetadataMap,
    /// The common name of the client's verified certificate.
    pub cert_user: Option<&'a str>,
}

/// Credentials kept for the life of a stream (each watcher, keepalive or
/// lock step on it is checked with them).
#[derive(Debug, Clone)]
pub struct StreamCredentials {
    metadata: tonic::metadata::MetadataMap,
    cert_user: Option<std::sync::Arc<str>>,
}

impl StreamCredentials {
    pub fn new(c: Credentials<'_>) -> StreamCredentials {
        StreamCredentials { metadata: c.metadata.clone(), cert_user: c.cert_user.map(std::sync::Arc::from) }
    }

    pub fn get(&self) -> Credentials<'_> {
        Credentials { metadata: &self.metadata, cert_user: self.cert_user.as_deref() }
    }
}

struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

pub struct AuthStore {
    state: RwLock<State>,
    tokens: SimpleTokens,
    bcrypt_cost: u32,
}

impl AuthStore {
    pub fn load(store: &Store, token_ttl: Duration, bcrypt_cost: u32) -> Result<AuthStore, MvccError> {
        let saved = match store.meta(META_AUTH)? {
            Some(bytes) => AuthState::decode(bytes.as_slice()).map_err(|e| MvccError::Corrupt(e.to_string()))?,
            // etcd's auth revision starts at 1: revision 0 means "no user".
            None => AuthState { revision: 1, ..Default::default() },
        };
        let name = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let state = State {
            enabled: saved.enabled,
            revision: saved.revision,
            users: saved.users.into_iter().map(|u| (name(&u.name), u)).collect(),
            roles: saved.roles.into_iter().map(|r| (name(&r.name), r)).collect(),
        };
        Ok(AuthStore { state: RwLock::new(state), tokens: SimpleTokens::new(token_ttl), bcrypt_cost })
    }

    /// Takes the users, roles and settings the store holds now (after a
    /// snapshot install); issued tokens stay valid.
    pub fn reload(&self, store: &Store) -> Result<(), MvccError> {
        let loaded = AuthStore::load(store, Duration::ZERO, self.bcrypt_cost)?;
        *self.state.write() = loaded.state.into_inner();
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.state.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// Who sent a request, from its token, or without one from its verified
    /// client certificate's common name (with --client-cert-auth, as etcd).
    /// Neither: an anonymous caller, refused by every check while auth is on.
    /// A token that is unknown or expired: etcd's "invalid auth token", which
    /// makes clients log in again. While auth is off, tokens mean nothing (a
    /// stale one is no error).
    pub fn caller(&self, credentials: Credentials<'_>) -> Result<AuthHeader, EtcdError> {
        let metadata = credentials.metadata;
        let (enabled, auth_revision) = {
            let state = self.state.read();
            (state.enabled, state.revision)
        };
        let token = TOKEN_KEYS
            .iter()
            .find_map(|k| metadata.get(*k))
            .and_then(|v| v.to_str().ok())
            // Some clients send the `authorization` form as "Bearer <token>".
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t));
        let Some(token) = token.filter(|_| enabled) else {
            let username = credentials.cert_user.filter(|_| enabled).unwrap_or_default().to_string();
            return Ok(AuthHeader { username, auth_revision });
        };
        match self.tokens.user(token) {
            Some(username) => Ok(AuthHeader { username, auth_revision }),
            None => Err(EtcdError::InvalidAuthToken),
        }
    }

    /// Checks a password (bcrypt: slow, call off the async runtime) and
    /// returns the auth revision it was checked at.
    pub fn check_password(&self, name: &str, password: &str) -> Result<u64, EtcdError> {
        let (hash, revision) = {
            let state = self.state.read();
            if !state.enabled {
                return Err(EtcdError::AuthNotEnabled);
            }
            let user = state.users.get(name).ok_or(EtcdError::AuthFailed)?;
            if user.options.is_some_and(|o| o.no_password) {
                return Err(EtcdError::NoPasswordUser);
            }
            (String::from_utf8_lossy(&user.password).into_owned(), state.revision)
        };
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(revision),
            _ => Err(EtcdError::AuthFailed),
        }
    }

    /// A bcrypt hash of a new password (slow, call off the async runtime).
    pub fn hash_password(&self, password: &str) -> Result<String, EtcdError> {
        bcrypt::hash(password, self.bcrypt_cost).map_err(|e| EtcdError::Internal(format!("hashing a password: {e}")))
    }

    pub fn new_token_prefix(&self) -> String {
        SimpleTokens::new_prefix()
    }

    fn persist(state: &State, batch: &mut WriteBatch<'_>) {
        let saved = AuthState {
            enabled: state.enabled,
            revision: state.revision,
            users: state.users.values().cloned().collect(),
            roles: state.roles.values().cloned().collect(),
        };
        batch.set_meta(META_AUTH, &saved.encode_to_vec());
    }
}

#[cfg(test)]
mod tests;
