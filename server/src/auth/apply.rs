//! Applies committed auth requests to the auth store, with etcd's rules and
//! answers. Every change moves the auth revision (enabling excepted, as in
//! etcd) and is persisted in the same backend batch as the entry's index.

use super::check::is_root;
use super::{AuthStore, State, ROOT_ROLE, ROOT_USER};
use crate::error::EtcdError;
use crate::mvcc::WriteBatch;
use crate::proto::authpb::{Role, User, UserAddOptions};
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::auth_request::Request as Req;
use crate::proto::ferrocdpb::AuthHeader;

#[derive(Debug, Clone)]
pub enum AuthResponse {
    Enable(AuthEnableResponse),
    Disable(AuthDisableResponse),
    Status(AuthStatusResponse),
    Authenticate(AuthenticateResponse),
    UserAdd(AuthUserAddResponse),
    UserGet(AuthUserGetResponse),
    UserList(AuthUserListResponse),
    UserDelete(AuthUserDeleteResponse),
    UserChangePassword(AuthUserChangePasswordResponse),
    UserGrantRole(AuthUserGrantRoleResponse),
    UserRevokeRole(AuthUserRevokeRoleResponse),
    RoleAdd(AuthRoleAddResponse),
    RoleGet(AuthRoleGetResponse),
    RoleList(AuthRoleListResponse),
    RoleDelete(AuthRoleDeleteResponse),
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

/// etcd's `needAdminPermission`: everything but log-in needs the root role,
/// except a user reading itself or a role it holds.
fn needs_admin(state: &State, who: &AuthHeader, req: &Req) -> bool {
    match req {
        Req::Authenticate(_) => false,
        Req::UserGet(r) => who.username != r.name,
        Req::RoleGet(r) => !state.users.get(&who.username).is_some_and(|u| u.roles.contains(&r.role)),
        _ => true,
    }
}

/// A permission's range is a key, a `[key, range_end)` with key < range_end,
/// or from key to the end (`"\0"`); the key itself is never empty.
fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

impl State {
    fn user_mut(&mut self, name: &str) -> Result<&mut User, EtcdError> {
        self.users.get_mut(name).ok_or(EtcdError::UserNotFound)
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut Role, EtcdError> {
        self.roles.get_mut(name).ok_or(EtcdError::RoleNotFound)
    }
}

impl AuthStore {
    /// Applies one auth request. `who` is the caller (always known for auth
    /// requests); `index` is the entry's raft index, which makes tokens unique.
    pub fn apply(
        &self,
        batch: &mut WriteBatch<'_>,
        index: u64,
        who: &AuthHeader,
        req: Req,
    ) -> Result<AuthResponse, EtcdError> {
        let mut state = self.state.write();
        if needs_admin(&state, who, &req) {
            state.admin(who)?;
        }
        let mut changed = true;
        let resp = match req {
            Req::Enable(_) => {
                if !state.enabled {
                    let root = state.users.get(ROOT_USER).ok_or(EtcdError::RootUserNotExist)?;
                    if !is_root(root) {
                        return Err(EtcdError::RootRoleNotExist);
                    }
                    state.enabled = true;
                    tracing::info!("enabled authentication");
                } else {
                    changed = false;
                }
                AuthResponse::Enable(AuthEnableResponse::default())
            }
            Req::Disable(_) => {
                if state.enabled {
                    state.enabled = false;
                    self.tokens.clear();
                    tracing::info!("disabled authentication");
                } else {
                    changed = false;
                }
                AuthResponse::Disable(AuthDisableResponse::default())
            }
            Req::Status(_) => {
                changed = false;
                AuthResponse::Status(AuthStatusResponse {
                    header: None,
                    enabled: state.enabled,
                    auth_revision: state.revision,
                })
            }
            Req::Authenticate(r) => {
                changed = false;
                if !state.enabled {
                    return Err(EtcdError::AuthNotEnabled);
                }
                let user = state.users.get(&r.name).ok_or(EtcdError::AuthFailed)?;
                if user.options.is_some_and(|o| o.no_password) {
                    return Err(EtcdError::AuthFailed);
                }
                let token = format!("{}.{}", r.simple_token, index);
                self.tokens.assign(token.clone(), &r.name);
                AuthResponse::Authenticate(AuthenticateResponse { header: None, token })
            }
            Req::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if state.users.contains_key(&r.name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let password = if options.no_password { Vec::new() } else { r.hashed_password.into_bytes() };
                let user =
                    User { name: r.name.clone().into_bytes(), password, roles: Vec::new(), options: Some(options) };
                state.users.insert(r.name, user);
                AuthResponse::UserAdd(AuthUserAddResponse::default())
            }
            Req::UserGet(r) => {
                changed = false;
                let user = state.users.get(&r.name).ok_or(EtcdError::UserNotFound)?;
                AuthResponse::UserGet(AuthUserGetResponse { header: None, roles: user.roles.clone() })
            }
            Req::UserList(_) => {
                changed = false;
                AuthResponse::UserList(AuthUserListResponse {
                    header: None,
                    users: state.users.keys().cloned().collect(),
                })
            }
            Req::UserDelete(r) => {
                if state.enabled && r.name == ROOT_USER {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                state.users.remove(&r.name).ok_or(EtcdError::UserNotFound)?;
                self.tokens.invalidate_user(&r.name);
                AuthResponse::UserDelete(AuthUserDeleteResponse::default())
            }
            Req::UserChangePassword(r) => {
                let user = state.user_mut(&r.name)?;
                user.password = r.hashed_password.into_bytes();
                self.tokens.invalidate_user(&r.name);
                AuthResponse::UserChangePassword(AuthUserChangePasswordResponse::default())
            }
            Req::UserGrantRole(r) => {
                // The root role exists implicitly: it can be granted unstored.
                if r.role != ROOT_ROLE && !state.roles.contains_key(&r.role) {
                    state.user_mut(&r.user)?;
                    return Err(EtcdError::RoleNotFound);
                }
                let user = state.user_mut(&r.user)?;
                match user.roles.binary_search(&r.role) {
                    Ok(_) => changed = false,
                    Err(at) => user.roles.insert(at, r.role),
                }
                AuthResponse::UserGrantRole(AuthUserGrantRoleResponse::default())
            }
            Req::UserRevokeRole(r) => {
                if state.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let user = state.user_mut(&r.name)?;
                let at = user.roles.iter().position(|x| *x == r.role).ok_or(EtcdError::RoleNotGranted)?;
                user.roles.remove(at);
                AuthResponse::UserRevokeRole(AuthUserRevokeRoleResponse::default())
            }
            Req::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if state.roles.contains_key(&r.name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                state.roles.insert(r.name.clone(), Role { name: r.name.into_bytes(), key_permission: Vec::new() });
                AuthResponse::RoleAdd(AuthRoleAddResponse::default())
            }
            Req::RoleGet(r) => {
                changed = false;
                // The root role's power is implicit: it lists what it was granted.
                let perm = state.roles.get(&r.role).ok_or(EtcdError::RoleNotFound)?.key_permission.clone();
                AuthResponse::RoleGet(AuthRoleGetResponse { header: None, perm })
            }
            Req::RoleList(_) => {
                changed = false;
                AuthResponse::RoleList(AuthRoleListResponse {
                    header: None,
                    roles: state.roles.keys().cloned().collect(),
                })
            }
            Req::RoleDelete(r) => {
                if state.enabled && r.role == ROOT_ROLE {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                state.roles.remove(&r.role).ok_or(EtcdError::RoleNotFound)?;
                for user in state.users.values_mut() {
                    user.roles.retain(|x| *x != r.role);
                }
                AuthResponse::RoleDelete(AuthRoleDeleteResponse::default())
            }
            Req::RoleGrantPermission(r) => {
                // etcd's order: the permission, its range, then the role.
                let perm = r.perm.ok_or(EtcdError::PermissionNotGiven)?;
                if !valid_range(&perm.key, &perm.range_end) {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let role = state.role_mut(&r.name)?;
                let perms = &mut role.key_permission;
                match perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(existing) => existing.perm_type = perm.perm_type,
                    None => {
                        let at = perms.partition_point(|p| (&p.key, &p.range_end) < (&perm.key, &perm.range_end));
                        perms.insert(at, perm);
                    }
                }
                AuthResponse::RoleGrantPermission(AuthRoleGrantPermissionResponse::default())
            }
            Req::RoleRevokePermission(r) => {
                let role = state.role_mut(&r.role)?;
                let at = role
                    .key_permission
                    .iter()
                    .position(|p| p.key == r.key && p.range_end == r.range_end)
                    .ok_or(EtcdError::PermissionNotGranted)?;
                role.key_permission.remove(at);
                AuthResponse::RoleRevokePermission(AuthRoleRevokePermissionResponse::default())
            }
        };
        if changed {
            // Enabling keeps the revision (etcd's rule); every other change moves it.
            if !matches!(resp, AuthResponse::Enable(_)) {
                state.revision += 1;
            }
            tracing::debug!(revision = state.revision, user = %who.username, "auth store changed");
            Self::persist(&state, batch);
        }
        Ok(resp)
    }
}
