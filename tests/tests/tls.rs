//! TLS with etcd's flags: stock etcdctl 3.5.1 and 3.4 and the etcd-client
//! crate over TLS, client certificates as auth users, refusals (each logged,
//! the server serving on), certificates rotated on disk while clients
//! write, revocation lists and protocol versions, clear start-up errors,
//! auto TLS, and an https cluster whose members verify each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocd_tests::certs::{Ca, Pem, Pki, Validity, HOSTS};
use ferrocd_tests::cluster::Cluster;
use ferrocd_tests::etcdctl;
use ferrocd_tests::member::{Member, Seat};
use ferrocd_tests::tools::{self, require_tool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The shared set, plus client certificates: CN alice, one from another
/// CA, an expired one.
struct Certs {
    p: Pki,
    alice: Pem,
    stranger: Pem,
    expired: Pem,
}

fn certs() -> Certs {
    let p = Pki::new();
    let other = Ca::new(p.dir.path(), "other");
    Certs {
        alice: p.ca.issue("alice", "alice", &[], Validity::Now),
        stranger: other.issue("stranger", "root", &[], Validity::Now),
        expired: p.ca.issue("expired", "root", &[], Validity::Expired),
        p,
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `host:port` of a member (etcdctl's own endpoint form).
fn host_port(m: &Member) -> String {
    m.endpoint().split("://").nth(1).expect("scheme").to_string()
}

/// etcdctl with TLS flags: the CA, and the client certificate if any.
fn ctl(etcdctl: &std::path::Path, m: &Member, ca: &Ca, client: Option<&Pem>, args: &[&str]) -> etcdctl::Output {
    let mut all = vec![format!("--cacert={}", ca.file.display())];
    all.extend(client.map(|c| c.etcdctl_args().to_vec()).unwrap_or_default());
    all.extend(args.iter().map(|s| s.to_string()));
    etcdctl::run(etcdctl, &host_port(m), &strs(&all), None)
}

/// A TLS handshake with the server at `addr` (rustls, as a client):
/// the server certificate's CN, or why it failed.
async fn handshake(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Pem>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<String, String> {
    let config = ferrocd_tests::certs::rustls_client(ca, client, versions);
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    // TLS 1.3 servers refuse a client certificate after the handshake: a
    // read shows it.
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no server certificate")?.clone();
    let text = String::from_utf8_lossy(&out);
    if !text.contains("200 OK") {
        return Err(format!("unexpected answer: {text}"));
    }
    Ok(common_name(&cert))
}

fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("server certificate");
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default();
    cn.to_string()
}

fn addr(m: &Member) -> SocketAddr {
    host_port(m).parse().expect("address")
}

/// How many refusals the member has logged.
fn refusals(m: &Member) -> usize {
    std::fs::read_to_string(m.log_path()).unwrap_or_default().matches("rejected connection").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_over_tls_with_certificates_as_users_and_refusals_logged() {
    let (Some(ctl35), Some(ctl34)) = (require_tool("etcdctl-3.5"), require_tool("etcdctl-3.4")) else { return };
    let k = certs();
    let p = &k.p;
    let m = Member::try_ferrocd_at(&p.seat("m0", false), &strs(&p.server_flags())).await.expect("a TLS member starts");

    // Stock etcdctl 3.5.1 and 3.4 with --cacert/--cert/--key.
    for (i, etcdctl) in [&ctl35, &ctl34].into_iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(ctl(etcdctl, &m, &p.ca, Some(&p.root), &["put", &key, "v"]).ok().trim(), "OK");
        assert_eq!(ctl(etcdctl, &m, &p.ca, Some(&p.root), &["get", &key, "--print-value-only"]).ok().trim(), "v");
        let health = ctl(etcdctl, &m, &p.ca, Some(&p.root), &["endpoint", "health"]);
        assert!(health.success && format!("{}{}", health.stdout, health.stderr).contains("is healthy"));
    }
    // The etcd-client crate over TLS.
    let mut c = m.client().await;
    c.put("crate", "yes", None).await.expect("put over TLS");
    assert_eq!(c.get("crate", None).await.expect("get").kvs()[0].value(), b"yes");

    // Refused at the handshake: no certificate, another CA's, an expired one.
    let before = refusals(&m);
    for client in [None, Some(&k.stranger), Some(&k.expired)] {
        let out = ctl(&ctl35, &m, &p.ca, client, &["--dial-timeout=2s", "--command-timeout=3s", "get", "k0"]);
        assert!(!out.success, "refused: {client:?}\n{}", out.stdout);
        let raw = handshake(addr(&m), &p.ca, client, &[&rustls::version::TLS13, &rustls::version::TLS12]).await;
        assert!(raw.is_err(), "the handshake itself is refused for {client:?}");
    }
    // Plain text on the TLS port: HTTP/1 is told, gRPC gets nothing.
    let mut tcp = tokio::net::TcpStream::connect(addr(&m)).await.expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.contains("Client sent an HTTP request to an HTTPS server"), "{answer}");
    let plain = etcdctl::run(
        &ctl35,
        &format!("http://{}", host_port(&m)),
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "k0"],
        None,
    );
    assert!(!plain.success);
    // Each refusal is logged, and the server serves on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while refusals(&m) < before + 7 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(m.log_path()).expect("log");
    assert!(refusals(&m) >= before + 7, "refusals logged: {}\n{log}", refusals(&m) - before);
    for reason in ["no certificate", "UnknownIssuer", "xpired", "plain text on a TLS port"] {
        assert!(log.contains(reason), "a refusal says {reason:?}:\n{log}");
    }
    assert_eq!(ctl(&ctl35, &m, &p.ca, Some(&p.root), &["put", "after", "refusals"]).ok().trim(), "OK");

    // With auth on, a certificate's CN is the user of a request without a token.
    let admin = |args: &[&str]| ctl(&ctl35, &m, &p.ca, Some(&p.root), args).ok();
    admin(&["user", "add", "root:rootpw"]);
    admin(&["role", "add", "root"]);
    admin(&["user", "grant-role", "root", "root"]);
    admin(&["user", "add", "alice", "--no-password"]);
    admin(&["auth", "enable"]);
    assert_eq!(ctl(&ctl35, &m, &p.ca, Some(&p.root), &["put", "by-cert", "root"]).ok().trim(), "OK");
    let denied = ctl(&ctl35, &m, &p.ca, Some(&k.alice), &["put", "by-cert", "alice"]);
    assert!(!denied.success && denied.stderr.contains("permission denied"), "{}", denied.stderr);
    let read = ctl(&ctl34, &m, &p.ca, Some(&p.root), &["get", "by-cert", "--print-value-only"]).ok();
    assert_eq!(read.trim(), "root");
    // A token still wins over the certificate.
    let as_root = ctl(&ctl35, &m, &p.ca, Some(&k.alice), &["--user=root:rootpw", "put", "by-token", "x"]);
    assert_eq!(as_root.ok().trim(), "OK");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotated_on_disk_are_served_without_a_restart_or_a_failed_request() {
    let k = certs();
    let p = &k.p;
    let m = Member::try_ferrocd_at(&p.seat("m0", false), &strs(&p.server_flags())).await.expect("a TLS member starts");
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    assert_eq!(handshake(addr(&m), &p.ca, Some(&p.root), &versions).await.as_deref(), Ok("server-1"));

    // A client writes on one connection throughout.
    let mut client = m.client().await;
    let writer = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, Vec::new());
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            match client.put(format!("w{ok}"), "v", None).await {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Rotate as cert-manager does: new files, then renamed into place
    // (the certificate first, so for a moment it does not match the key).
    let next = p.ca.issue("server-next", "server-2", &HOSTS, Validity::Now);
    std::fs::rename(&next.cert, &p.server.cert).expect("rotate cert");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::rename(&next.key, &p.server.key).expect("rotate key");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = handshake(addr(&m), &p.ca, Some(&p.root), &versions).await;
        if seen.as_deref() == Ok("server-2") {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate is not served: {seen:?}\n{}", m.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, failed) = writer.await.expect("writer");
    assert!(failed.is_empty(), "no request fails during the rotation: {failed:?}");
    assert!(ok > 50, "the writer wrote throughout ({ok} puts)");
    let log = std::fs::read_to_string(m.log_path()).expect("log");
    assert!(log.contains("reloaded TLS certificates"), "{log}");
    // The half-done rotation was noticed and waited out, not served.
    assert!(log.contains("does not match certificate"), "{log}");
    // New clients connect with the new certificate.
    m.client().await.put("after", "rotation", None).await.expect("put on a new connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_certificates_and_protocol_versions_are_refused() {
    let k = certs();
    let p = &k.p;
    let crl = p.ca.crl(&[&k.alice]);
    let mut flags = p.server_flags();
    flags.extend([format!("--client-crl-file={}", crl.display()), "--tls-min-version=TLS1.3".into()]);
    let m = Member::try_ferrocd_at(&p.seat("m0", false), &strs(&flags)).await.expect("a TLS member starts");
    let tls13: [&'static rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    assert!(handshake(addr(&m), &p.ca, Some(&p.root), &tls13).await.is_ok());
    let revoked = handshake(addr(&m), &p.ca, Some(&k.alice), &tls13).await;
    assert!(revoked.is_err(), "a revoked certificate is refused");
    let old = handshake(addr(&m), &p.ca, Some(&p.root), &[&rustls::version::TLS12]).await;
    assert!(old.is_err(), "TLS 1.2 is refused under --tls-min-version TLS1.3");
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = std::fs::read_to_string(m.log_path()).expect("log");
        if (log.contains("Revoked") && log.contains("rejected connection")) || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("Revoked"), "the refusal names the revocation:\n{log}");

    // Only TLS 1.2 with one chosen suite: TLS 1.3 clients are refused.
    let mut flags = p.server_flags();
    flags.extend(["--tls-max-version=TLS1.2".into(), "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()]);
    let m12 = Member::try_ferrocd_at(&p.seat("m0", false), &strs(&flags)).await.expect("a TLS 1.2 member starts");
    assert!(handshake(addr(&m12), &p.ca, Some(&p.root), &[&rustls::version::TLS12]).await.is_ok());
    assert!(handshake(addr(&m12), &p.ca, Some(&p.root), &tls13).await.is_err());

    // A trusted CA alone requires client certificates, as in etcd (without
    // --client-cert-auth their CN is not a user, though).
    let flags: Vec<String> = p.server_flags().into_iter().filter(|f| f != "--client-cert-auth").collect();
    let ca_only = Member::try_ferrocd_at(&p.seat("m0", false), &strs(&flags)).await.expect("a member starts");
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    assert!(handshake(addr(&ca_only), &p.ca, Some(&p.root), &both).await.is_ok());
    assert!(handshake(addr(&ca_only), &p.ca, None, &both).await.is_err(), "no certificate, no entry");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_settings_stop_the_start_with_a_clear_error() {
    let k = certs();
    let p = &k.p;
    let other_key = p.ca.issue("other", "other", &HOSTS, Validity::Now);
    let expired_server = p.ca.issue("expired-server", "server-1", &HOSTS, Validity::Expired);
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--cert-file=/nonexistent/cert.pem".into(), format!("--key-file={}", p.server.key.display())],
            "cannot read certificate /nonexistent/cert.pem".into(),
        ),
        (
            vec![format!("--cert-file={}", p.server.cert.display()), format!("--key-file={}", other_key.key.display())],
            "does not match certificate".into(),
        ),
        (
            vec![
                format!("--cert-file={}", expired_server.cert.display()),
                format!("--key-file={}", expired_server.key.display()),
            ],
            "has expired".into(),
        ),
        (vec![], "must be provided for client url https://".into()),
        (
            [p.server_flags(), vec!["--tls-min-version=TLS1.1".into()]].concat(),
            "is not supported: use TLS1.2 or TLS1.3".into(),
        ),
        (
            [p.server_flags(), vec!["--cipher-suites=TLS_NOT_A_SUITE".into()]].concat(),
            "is not supported; choose from".into(),
        ),
        (
            // Go's name of a suite rustls leaves out: skipped, and then none is left.
            [p.server_flags(), vec!["--cipher-suites=TLS_RSA_WITH_RC4_128_SHA".into()]].concat(),
            "names no TLS 1.2 suite ferrocd offers".into(),
        ),
        (
            vec![
                format!("--cert-file={}", p.server.cert.display()),
                format!("--key-file={}", p.server.key.display()),
                "--client-cert-auth".into(),
            ],
            "--client-cert-auth needs --trusted-ca-file".into(),
        ),
    ];
    for (flags, expected) in cases {
        match Member::try_ferrocd_at(&p.seat("m0", false), &strs(&flags)).await {
            Ok(_) => panic!("started with {flags:?}"),
            Err(log) => assert!(log.contains(&expected), "{flags:?}: expected {expected:?} in:\n{log}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_tls_serves_clients_and_members_over_self_signed_certificates() {
    let Some(ctl35) = require_tool("etcdctl-3.5") else { return };
    // Peers on https with --peer-auto-tls; clients on http (for the
    // harness) and on an https listener with --auto-tls.
    let mut seats: Vec<Seat> = (0..3).map(|i| Seat::new(&format!("m{i}"))).collect();
    for s in &mut seats {
        s.peer_tls = true;
    }
    let https: Vec<u16> = (0..3).map(|_| ferrocd_tests::ports::free_port()).collect();
    let mut cluster = Cluster::start_at(tools::ferrocd_bin(), seats.clone(), &["--peer-auto-tls"], None).await;
    // (The harness gives every member the same flags: the extra https
    // listener is added by restarting each with it.)
    for (i, m) in cluster.members.iter_mut().enumerate() {
        m.set_flag("--listen-client-urls", &format!("{},https://127.0.0.1:{}", seats[i].client_url(), https[i]));
        m.set_flag("--auto-tls", "true");
        m.restart().await;
    }
    cluster.client().await.put("w/over", "auto-tls peers", None).await.expect("put");
    cluster.check_converged(&["w/over".to_string()]).await;
    for (i, m) in cluster.members.iter().enumerate() {
        assert!(m.data_dir().join("fixtures/peer/cert.pem").exists());
        assert!(m.data_dir().join("fixtures/client/cert.pem").exists());
        let ep = format!("127.0.0.1:{}", https[i]);
        let out = etcdctl::run(
            &ctl35,
            &ep,
            &["--insecure-transport=false", "--insecure-skip-tls-verify", "get", "w/over", "--print-value-only"],
            None,
        );
        assert_eq!(out.ok().trim(), "auto-tls peers");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_cluster_verifies_its_members_and_refuses_foreign_ones() {
    let k = certs();
    let p = &k.p;
    let flags = [p.server_flags(), p.peer_flags(&p.peer)].concat();
    let seats: Vec<Seat> = (0..3).map(|i| p.seat(&format!("m{i}"), true)).collect();
    let mut cluster = Cluster::start_at(tools::ferrocd_bin(), seats, &strs(&flags), None).await;
    let mut c = cluster.client().await;
    let keys: Vec<String> = (0..50).map(|i| format!("w/k{i}")).collect();
    for k in &keys {
        c.put(k.as_str(), "v", None).await.expect("put");
    }
    cluster.check_converged(&keys).await;
    let listed = c.member_list().await.expect("member list");
    assert!(listed.members().iter().all(|m| m.peer_urls().iter().all(|u| u.starts_with("https://"))));

    // A member's preStop hand-over works over TLS (etcdctl's flag names).
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let out = std::process::Command::new(tools::sibling_bin("ferrocdutl"))
        .arg("hand-over")
        .arg(format!("--endpoint={}", cluster.members[leader].endpoint()))
        .arg(format!("--cacert={}", p.ca.file.display()))
        .arg(format!("--cert={}", p.root.cert.display()))
        .arg(format!("--key={}", p.root.key.display()))
        .output()
        .expect("run ferrocdutl");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("leadership moved"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(cluster.leader(Duration::from_secs(10)).await, leader);

    // Two would-be members: one with another CA's certificate, one with
    // this CA's but a CN --peer-cert-allowed-cn does not allow. Each is
    // added as a learner (the quorum does not depend on it) and refused.
    let stranger = {
        let other = Ca::new(p.dir.path(), "foreign");
        other.issue("peer", "member", &HOSTS, Validity::Now)
    };
    let intruder = p.ca.issue("intruder", "intruder", &HOSTS, Validity::Now);
    for (name, pem, reason) in [("m3", &stranger, "UnknownIssuer"), ("m4", &intruder, "--peer-cert-allowed-cn")] {
        let seat = p.seat(name, true);
        // (Refused as "unhealthy cluster" until peers have been connected
        // for 5 s, as etcd's strict reconfiguration check.)
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) =
            c.member_add([seat.peer_url()], Some(etcd_client::MemberAddOptions::new().with_is_learner())).await
        {
            assert!(Instant::now() < deadline && e.to_string().contains("unhealthy cluster"), "member add: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let initial = cluster.seats.iter().chain([&seat]).map(Seat::cluster_entry).collect::<Vec<_>>().join(",");
        let own = [p.server_flags(), p.peer_flags(pem), vec!["--initial-cluster-state=existing".into()]].concat();
        let mut joiner = Member::in_cluster(tools::ferrocd_bin(), &seat, &initial, &strs(&own), None);
        joiner.launch_process();
        let deadline = Instant::now() + Duration::from_secs(10);
        let logs = loop {
            let logs: String =
                cluster.members.iter().map(|m| std::fs::read_to_string(m.log_path()).unwrap_or_default()).collect();
            if logs.contains(reason) || Instant::now() > deadline {
                break logs;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(logs.contains("rejected connection") && logs.contains(reason), "{name}: no refusal naming {reason:?}");
        joiner.kill();
        // The cluster is unharmed: it writes, and removes the learner.
        c.put(format!("after-{name}"), "v", None).await.expect("put after the refusal");
        let id = c
            .member_list()
            .await
            .expect("member list")
            .members()
            .iter()
            .find(|m| m.peer_urls().contains(&seat.peer_url()))
            .map(|m| m.id())
            .expect("the learner is listed");
        c.member_remove(id).await.expect("remove the refused learner");
    }
    cluster.check_converged(&keys).await;
}
