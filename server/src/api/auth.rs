//! The Auth service. Every request goes through raft, reads included (as in
//! etcd), and is checked when it applies; passwords are hashed and checked
//! here, off the async runtime, so that bcrypt never runs in the applier.

use std::sync::Arc;

use base64::Engine;
use tonic::{Request, Response, Status};

use super::expect;
use crate::apply::ApplyResponse;
use crate::auth::{AuthResponse, AuthStore};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::auth_request::Request as AuthReq;
use crate::proto::ferrocdpb::internal_request::Request as Internal;
use crate::proto::ferrocdpb::{AuthHeader, AuthRequest};
use crate::server::EtcdServer;

pub struct AuthService {
    server: Arc<EtcdServer>,
}

impl AuthService {
    pub fn new(server: Arc<EtcdServer>) -> AuthService {
        AuthService { server }
    }

    /// Proposes one auth request as `who` and picks its response.
    async fn call<T>(&self, who: AuthHeader, req: AuthReq, pick: fn(AuthResponse) -> Option<T>) -> Result<T, Status> {
        let applied = self.server.propose_as(who, Internal::Auth(AuthRequest { request: Some(req) })).await?;
        let resp = expect(applied, |a| if let ApplyResponse::Auth(r) = a { Some(r) } else { None })?;
        expect(resp, pick)
    }

    /// The caller and the request body.
    fn open<T>(&self, req: Request<T>) -> Result<(AuthHeader, T), Status> {
        let who = self.server.auth.caller(super::credentials(&req))?;
        Ok((who, req.into_inner()))
    }

    /// bcrypt off the async runtime.
    async fn bcrypt<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AuthStore) -> Result<T, EtcdError> + Send + 'static,
    ) -> Result<T, Status> {
        let auth = self.server.auth.clone();
        match tokio::task::spawn_blocking(move || f(&auth)).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// A bcrypt hash of a new password (empty ones included, as etcd).
    async fn password_hash(&self, password: String) -> Result<String, Status> {
        self.bcrypt(move |auth| auth.hash_password(&password)).await
    }
}

/// One RPC: take the caller, propose, fill the header.
macro_rules! rpc {
    ($self:ident, $req:ident, $variant:ident) => {{
        let (who, r) = $self.open($req)?;
        rpc!($self, who, r, $variant)
    }};
    ($self:ident, $who:expr, $r:expr, $variant:ident) => {{
        let mut resp = $self
            .call($who, AuthReq::$variant($r), |a| match a {
                AuthResponse::$variant(x) => Some(x),
                _ => None,
            })
            .await?;
        $self.server.fill(&mut resp.header);
        Ok(Response::new(resp))
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        rpc!(self, req, Enable)
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        rpc!(self, req, Disable)
    }

    async fn auth_status(&self, req: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        rpc!(self, req, Status)
    }

    /// The password is checked here; the token is assigned when the entry
    /// applies. If the auth store changed in between (the user's password,
    /// say), the check is done again, as etcd does.
    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        self.server.linearizable_barrier().await?;
        loop {
            let (name, password) = (r.name.clone(), r.password.clone());
            let checked = self.bcrypt(move |auth| auth.check_password(&name, &password)).await.inspect_err(|e| {
                if e.message() != EtcdError::AuthNotEnabled.to_string() {
                    tracing::warn!(user = %r.name, error = %e.message(), "authentication refused");
                }
            })?;
            let login = crate::proto::ferrocdpb::AuthenticateRequest {
                name: r.name.clone(),
                simple_token: self.server.auth.new_token_prefix(),
            };
            // Logging in needs no token: the caller is nobody yet.
            let mut resp = self
                .call(AuthHeader::default(), AuthReq::Authenticate(login), |a| match a {
                    AuthResponse::Authenticate(x) => Some(x),
                    _ => None,
                })
                .await?;
            if checked == self.server.auth.revision() {
                self.server.fill(&mut resp.header);
                return Ok(Response::new(resp));
            }
            tracing::info!(user = %r.name, "auth store changed while the password was checked; checking again");
        }
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let (who, mut r) = self.open(req)?;
        if !r.options.is_some_and(|o| o.no_password) {
            // A hash the client sent is not trusted: etcd overwrites it too.
            r.hashed_password = self.password_hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        rpc!(self, who, r, UserAdd)
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        rpc!(self, req, UserGet)
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        rpc!(self, req, UserList)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        rpc!(self, req, UserDelete)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (who, mut r) = self.open(req)?;
        // As etcd: a password is hashed here; without one, the client's own
        // base64 bcrypt hash is taken as sent, and with neither the user can
        // no longer log in.
        r.hashed_password = if r.password.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&r.hashed_password)
                .map_err(|_| EtcdError::NoPasswordUser)?;
            String::from_utf8(decoded).map_err(|_| EtcdError::NoPasswordUser)?
        } else {
            self.password_hash(std::mem::take(&mut r.password)).await?
        };
        rpc!(self, who, r, UserChangePassword)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        rpc!(self, req, UserGrantRole)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        rpc!(self, req, UserRevokeRole)
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        rpc!(self, req, RoleAdd)
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        rpc!(self, req, RoleGet)
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        rpc!(self, req, RoleList)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        rpc!(self, req, RoleDelete)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        rpc!(self, req, RoleGrantPermission)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        rpc!(self, req, RoleRevokePermission)
    }
}
