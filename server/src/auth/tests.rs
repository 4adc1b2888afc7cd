use std::time::Duration;

use tonic::metadata::MetadataMap;

use super::*;
use crate::proto::authpb::{permission::Type, Permission, UserAddOptions};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::*;
use crate::proto::ferrocdpb::auth_request::Request as Req;
use crate::proto::ferrocdpb::AuthenticateRequest as Login;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    auth: AuthStore,
    index: u64,
}

const ROOT: fn() -> AuthHeader = || AuthHeader { username: "root".into(), auth_revision: u64::MAX };

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let auth = AuthStore::load(&store, Duration::from_secs(60), 4).unwrap();
        Fixture { _dir: dir, store, auth, index: 1 }
    }

    /// Applies and commits one request, as the applier does.
    fn apply(&mut self, who: &AuthHeader, req: Req) -> Result<AuthResponse, EtcdError> {
        let mut batch = self.store.write();
        let result = self.auth.apply(&mut batch, self.index, who, req);
        batch.commit(self.index, 1);
        self.index += 1;
        result
    }

    fn ok(&mut self, req: Req) -> AuthResponse {
        self.apply(&ROOT(), req).unwrap()
    }

    fn add_user(&mut self, name: &str, password: &str) {
        let hashed_password = self.auth.hash_password(password).unwrap();
        self.ok(Req::UserAdd(AuthUserAddRequest { name: name.into(), hashed_password, ..Default::default() }));
    }

    /// root with the root role, auth on; "alice" may read "a".."m" and write "foo".
    fn enabled() -> Fixture {
        let mut f = Fixture::new();
        f.add_user("root", "rootpw");
        f.ok(Req::UserGrantRole(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }));
        f.add_user("alice", "alicepw");
        f.ok(Req::RoleAdd(AuthRoleAddRequest { name: "r".into() }));
        f.grant("r", Type::Read, "a", "m");
        f.grant("r", Type::Write, "foo", "");
        f.ok(Req::UserGrantRole(AuthUserGrantRoleRequest { user: "alice".into(), role: "r".into() }));
        f.ok(Req::Enable(AuthEnableRequest {}));
        f
    }

    fn grant(&mut self, role: &str, t: Type, key: &str, end: &str) {
        let perm = Permission { perm_type: t as i32, key: key.into(), range_end: end.into() };
        self.ok(Req::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: role.into(), perm: Some(perm) }));
    }

    fn as_user(&self, name: &str) -> AuthHeader {
        AuthHeader { username: name.into(), auth_revision: self.auth.revision() }
    }
}

fn put(key: &str, prev_kv: bool) -> PutRequest {
    PutRequest { key: key.into(), value: b"v".to_vec(), prev_kv, ..Default::default() }
}

#[test]
fn enabling_needs_root_with_the_root_role() {
    let mut f = Fixture::new();
    assert_eq!(f.apply(&ROOT(), Req::Enable(AuthEnableRequest {})).unwrap_err(), EtcdError::RootUserNotExist);
    f.add_user("root", "pw");
    assert_eq!(f.apply(&ROOT(), Req::Enable(AuthEnableRequest {})).unwrap_err(), EtcdError::RootRoleNotExist);
    // The root role needs no RoleAdd: it exists implicitly.
    f.ok(Req::UserGrantRole(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }));
    let before = f.auth.revision();
    f.ok(Req::Enable(AuthEnableRequest {}));
    assert!(f.auth.is_enabled());
    assert_eq!(f.auth.revision(), before, "enabling keeps the auth revision");
    f.ok(Req::Enable(AuthEnableRequest {}));
    f.ok(Req::Disable(AuthDisableRequest {}));
    assert!(!f.auth.is_enabled());
    assert_eq!(f.auth.revision(), before + 1);
}

#[test]
fn user_and_role_management_answers_as_etcd() {
    let mut f = Fixture::new();
    assert_eq!(f.auth.revision(), 1, "a new store starts at auth revision 1");
    let add = |name: &str| Req::UserAdd(AuthUserAddRequest { name: name.into(), ..Default::default() });
    assert_eq!(f.apply(&ROOT(), add("")).unwrap_err(), EtcdError::UserEmpty);
    f.ok(add("bob"));
    assert_eq!(f.apply(&ROOT(), add("bob")).unwrap_err(), EtcdError::UserAlreadyExist);
    let grant =
        |user: &str, role: &str| Req::UserGrantRole(AuthUserGrantRoleRequest { user: user.into(), role: role.into() });
    assert_eq!(f.apply(&ROOT(), grant("bob", "nope")).unwrap_err(), EtcdError::RoleNotFound);
    assert_eq!(f.apply(&ROOT(), grant("nobody", "root")).unwrap_err(), EtcdError::UserNotFound);
    assert_eq!(
        f.apply(&ROOT(), Req::RoleAdd(AuthRoleAddRequest { name: "".into() })).unwrap_err(),
        EtcdError::RoleEmpty
    );
    f.ok(Req::RoleAdd(AuthRoleAddRequest { name: "w".into() }));
    f.ok(Req::RoleAdd(AuthRoleAddRequest { name: "a".into() }));
    assert_eq!(
        f.apply(&ROOT(), Req::RoleAdd(AuthRoleAddRequest { name: "w".into() })).unwrap_err(),
        EtcdError::RoleAlreadyExist
    );
    f.ok(grant("bob", "w"));
    f.ok(grant("bob", "a"));
    let rev = f.auth.revision();
    f.ok(grant("bob", "w"));
    assert_eq!(f.auth.revision(), rev, "granting a role twice changes nothing");
    match f.ok(Req::UserGet(AuthUserGetRequest { name: "bob".into() })) {
        AuthResponse::UserGet(r) => assert_eq!(r.roles, ["a", "w"], "roles sorted"),
        other => panic!("{other:?}"),
    }
    match f.ok(Req::RoleList(AuthRoleListRequest {})) {
        AuthResponse::RoleList(r) => assert_eq!(r.roles, ["a", "w"]),
        other => panic!("{other:?}"),
    }
    let revoke = |role: &str| Req::UserRevokeRole(AuthUserRevokeRoleRequest { name: "bob".into(), role: role.into() });
    f.ok(revoke("a"));
    assert_eq!(f.apply(&ROOT(), revoke("a")).unwrap_err(), EtcdError::RoleNotGranted);
    let no_perm = Req::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: "w".into(), perm: None });
    assert_eq!(f.apply(&ROOT(), no_perm).unwrap_err(), EtcdError::PermissionNotGiven);
    let bad = Permission { perm_type: 0, key: b"z".to_vec(), range_end: b"a".to_vec() };
    let bad = Req::RoleGrantPermission(AuthRoleGrantPermissionRequest { name: "w".into(), perm: Some(bad) });
    assert_eq!(f.apply(&ROOT(), bad).unwrap_err(), EtcdError::InvalidAuthMgmt);
    f.grant("w", Type::Read, "k", "");
    f.grant("w", Type::Readwrite, "k", "");
    match f.ok(Req::RoleGet(AuthRoleGetRequest { role: "w".into() })) {
        AuthResponse::RoleGet(r) => {
            assert_eq!(r.perm.len(), 1, "same range: the type is replaced");
            assert_eq!(r.perm[0].perm_type(), Type::Readwrite);
        }
        other => panic!("{other:?}"),
    }
    let revoke_perm = |key: &str| {
        Req::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "w".into(),
            key: key.into(),
            range_end: vec![],
        })
    };
    f.ok(revoke_perm("k"));
    assert_eq!(f.apply(&ROOT(), revoke_perm("k")).unwrap_err(), EtcdError::PermissionNotGranted);
    f.ok(Req::RoleDelete(AuthRoleDeleteRequest { role: "w".into() }));
    match f.ok(Req::UserGet(AuthUserGetRequest { name: "bob".into() })) {
        AuthResponse::UserGet(r) => assert!(r.roles.is_empty(), "a deleted role leaves its users"),
        other => panic!("{other:?}"),
    }
    f.ok(Req::UserDelete(AuthUserDeleteRequest { name: "bob".into() }));
    assert_eq!(
        f.apply(&ROOT(), Req::UserDelete(AuthUserDeleteRequest { name: "bob".into() })).unwrap_err(),
        EtcdError::UserNotFound
    );
}

#[test]
fn root_stays_while_auth_is_on() {
    let mut f = Fixture::enabled();
    let root = ROOT();
    let del = Req::UserDelete(AuthUserDeleteRequest { name: "root".into() });
    assert_eq!(f.apply(&root, del).unwrap_err(), EtcdError::InvalidAuthMgmt);
    let revoke = Req::UserRevokeRole(AuthUserRevokeRoleRequest { name: "root".into(), role: "root".into() });
    assert_eq!(f.apply(&root, revoke).unwrap_err(), EtcdError::InvalidAuthMgmt);
    assert_eq!(
        f.apply(&root, Req::RoleDelete(AuthRoleDeleteRequest { role: "root".into() })).unwrap_err(),
        EtcdError::InvalidAuthMgmt
    );
}

#[test]
fn key_permissions_and_admin_checks() {
    let mut f = Fixture::enabled();
    let alice = f.as_user("alice");
    assert_eq!(f.auth.check_read(&alice, b"b", b""), Ok(()));
    assert_eq!(f.auth.check_read(&alice, b"a", b"m"), Ok(()));
    assert_eq!(f.auth.check_read(&alice, b"a", b"n"), Err(EtcdError::PermissionDenied));
    let no_keys = |_| Vec::new();
    assert_eq!(f.auth.check_put(&alice, &put("foo", false), &no_keys), Ok(()));
    assert_eq!(f.auth.check_put(&alice, &put("foo", true), &no_keys), Ok(()), "foo is inside a..m");
    assert_eq!(f.auth.check_put(&alice, &put("zoo", false), &no_keys), Err(EtcdError::PermissionDenied));
    let on_lease = PutRequest { lease: 5, ..put("foo", false) };
    assert_eq!(
        f.auth.check_put(&alice, &on_lease, &|id| if id == 5 { vec![b"zoo".to_vec()] } else { vec![] }),
        Err(EtcdError::PermissionDenied),
        "a lease holding a key alice cannot write"
    );
    let txn = |op: Op| TxnRequest {
        compare: vec![Compare { key: b"b".to_vec(), ..Default::default() }],
        success: vec![RequestOp { request: Some(Op::RequestPut(put("foo", false))) }],
        failure: vec![RequestOp { request: Some(op) }],
    };
    let ok = txn(Op::RequestRange(RangeRequest { key: b"c".to_vec(), ..Default::default() }));
    assert_eq!(f.auth.check_txn(&alice, &ok, &no_keys), Ok(()));
    let bad = txn(Op::RequestDeleteRange(DeleteRangeRequest { key: b"b".to_vec(), ..Default::default() }));
    assert_eq!(
        f.auth.check_txn(&alice, &bad, &no_keys),
        Err(EtcdError::PermissionDenied),
        "the failure branch counts too"
    );
    assert_eq!(f.auth.check_admin(&alice), Err(EtcdError::PermissionDenied));
    assert_eq!(f.auth.check_admin(&f.as_user("root")), Ok(()));
    assert_eq!(f.auth.check_read(&f.as_user("root"), b"", b"\0"), Ok(()));
    // No token, a stale revision, a user that is gone.
    assert_eq!(f.auth.check_read(&AuthHeader::default(), b"b", b""), Err(EtcdError::UserEmpty));
    let stale = AuthHeader { username: "alice".into(), auth_revision: f.auth.revision() - 1 };
    assert_eq!(f.auth.check_read(&stale, b"b", b""), Err(EtcdError::AuthOldRevision));
    assert_eq!(f.auth.check_read(&f.as_user("ghost"), b"b", b""), Err(EtcdError::PermissionDenied));
    // Management needs root, except reading oneself or a role one holds.
    let list = Req::UserList(AuthUserListRequest {});
    assert_eq!(f.apply(&alice, list).unwrap_err(), EtcdError::PermissionDenied);
    assert!(f.apply(&alice, Req::UserGet(AuthUserGetRequest { name: "alice".into() })).is_ok());
    assert!(f.apply(&alice, Req::RoleGet(AuthRoleGetRequest { role: "r".into() })).is_ok());
    assert_eq!(f.apply(&alice, Req::Status(AuthStatusRequest {})).unwrap_err(), EtcdError::PermissionDenied);
}

#[test]
fn tokens_name_their_user_until_the_password_changes() {
    let mut f = Fixture::enabled();
    assert_eq!(f.auth.check_password("alice", "alicepw"), Ok(f.auth.revision()));
    assert_eq!(f.auth.check_password("alice", "wrong"), Err(EtcdError::AuthFailed));
    assert_eq!(f.auth.check_password("nobody", "x"), Err(EtcdError::AuthFailed));
    let token = match f
        .apply(&AuthHeader::default(), Req::Authenticate(Login { name: "alice".into(), simple_token: "abc".into() }))
    {
        Ok(AuthResponse::Authenticate(r)) => r.token,
        other => panic!("{other:?}"),
    };
    assert!(token.starts_with("abc."), "{token}");
    let mut md = MetadataMap::new();
    md.insert("token", token.parse().unwrap());
    let by_token = |md| Credentials { metadata: md, cert_user: None };
    assert_eq!(f.auth.caller(by_token(&md)).unwrap().username, "alice");
    let hashed_password = f.auth.hash_password("new").unwrap();
    f.ok(Req::UserChangePassword(AuthUserChangePasswordRequest {
        name: "alice".into(),
        hashed_password,
        ..Default::default()
    }));
    assert_eq!(f.auth.caller(by_token(&md)).unwrap_err(), EtcdError::InvalidAuthToken);
    assert_eq!(f.auth.check_password("alice", "new"), Ok(f.auth.revision()));
    // No token: an anonymous caller, refused by the checks, not here.
    let none = MetadataMap::new();
    assert_eq!(f.auth.caller(by_token(&none)).unwrap().username, "");
    // No token but a verified client certificate: its common name.
    let cert = |md| Credentials { metadata: md, cert_user: Some("bob") };
    assert_eq!(f.auth.caller(cert(&none)).unwrap().username, "bob");
    // A token wins over the certificate, as in etcd.
    let token = match f
        .apply(&AuthHeader::default(), Req::Authenticate(Login { name: "alice".into(), simple_token: "def".into() }))
    {
        Ok(AuthResponse::Authenticate(r)) => r.token,
        other => panic!("{other:?}"),
    };
    let mut md = MetadataMap::new();
    md.insert("token", token.parse().unwrap());
    assert_eq!(f.auth.caller(cert(&md)).unwrap().username, "alice");
}

#[test]
fn no_password_users_cannot_log_in() {
    let mut f = Fixture::enabled();
    let options = Some(UserAddOptions { no_password: true });
    f.ok(Req::UserAdd(AuthUserAddRequest { name: "svc".into(), options, ..Default::default() }));
    assert_eq!(f.auth.check_password("svc", ""), Err(EtcdError::NoPasswordUser));
    let login = Req::Authenticate(Login { name: "svc".into(), simple_token: "x".into() });
    assert_eq!(f.apply(&AuthHeader::default(), login).unwrap_err(), EtcdError::AuthFailed);
}

#[test]
fn the_auth_store_survives_a_reopen() {
    let mut f = Fixture::enabled();
    let revision = f.auth.revision();
    let again = AuthStore::load(&f.store, Duration::from_secs(60), 4).unwrap();
    assert!(again.is_enabled());
    assert_eq!(again.revision(), revision);
    let alice = AuthHeader { username: "alice".into(), auth_revision: revision };
    assert_eq!(again.check_read(&alice, b"b", b""), Ok(()));
    assert_eq!(again.check_password("alice", "alicepw"), Ok(revision));
    match f.ok(Req::Status(AuthStatusRequest {})) {
        AuthResponse::Status(s) => assert!(s.enabled && s.auth_revision == revision),
        other => panic!("{other:?}"),
    }
}
