//! Certificates made by the tests (never committed keys): a CA, and
//! server, peer and client certificates it signs, written as PEM files;
//! `Pki`, the set a TLS member or cluster is started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: u64,
}

impl Pem {
    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(&self.cert).expect("read cert")
    }

    pub fn key_pem(&self) -> String {
        std::fs::read_to_string(&self.key).expect("read key")
    }

    /// etcdctl's `--cert`/`--key` flags for this certificate.
    pub fn etcdctl_args(&self) -> [String; 2] {
        [format!("--cert={}", self.cert.display()), format!("--key={}", self.key.display())]
    }
}

pub struct Ca {
    dir: PathBuf,
    name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
    pub file: PathBuf,
    next_serial: std::cell::Cell<u64>,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    Now,
    Expired,
}

impl Ca {
    /// A CA named `name`, writing its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(2);
        params.not_after = now + Duration::days(30);
        let cert = params.self_signed(&key).expect("self-sign CA");
        let file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&file, cert.pem()).expect("write CA");
        Ca { dir: dir.to_path_buf(), name: name.to_string(), cert, key, file, next_serial: std::cell::Cell::new(1) }
    }

    /// A certificate for `cn` valid for `hosts` (DNS names or IPs), for
    /// both server and client use, written as `<file>.pem` / `<file>-key.pem`.
    pub fn issue(&self, file: &str, cn: &str, hosts: &[&str], validity: Validity) -> Pem {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        params.serial_number = Some(SerialNumber::from(serial));
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = match validity {
            Validity::Now => (now - Duration::days(1), now + Duration::days(10)),
            Validity::Expired => (now - Duration::days(10), now - Duration::days(1)),
        };
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let pem = Pem {
            cert: self.dir.join(format!("{}-{file}.pem", self.name)),
            key: self.dir.join(format!("{}-{file}-key.pem", self.name)),
            serial,
        };
        std::fs::write(&pem.cert, cert.pem()).expect("write cert");
        std::fs::write(&pem.key, key.serialize_pem()).expect("write key");
        pem
    }

    /// A revocation list naming `revoked`, as `<name>-crl.pem`.
    pub fn crl(&self, revoked: &[&Pem]) -> PathBuf {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|p| RevokedCertParams {
                    serial_number: SerialNumber::from(p.serial),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).expect("sign CRL");
        let file = self.dir.join(format!("{}-crl.pem", self.name));
        std::fs::write(&file, crl.pem().expect("CRL PEM")).expect("write CRL");
        file
    }
}

/// How a client reaches a member over TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub etcd: etcd_client::TlsOptions,
    pub rustls: Arc<rustls::ClientConfig>,
}

/// A rustls client trusting `ca`, presenting `client` if given, speaking
/// only `versions`; with ring, as the server (no post-quantum groups).
pub fn rustls_client(
    ca: &Ca,
    client: Option<&Pem>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca.file).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    match client {
        Some(p) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&p.cert).expect("cert").map(|c| c.expect("cert")).collect(),
                PrivateKeyDer::from_pem_file(&p.key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    }
}

/// The hosts the tests' server certificates are valid for.
pub const HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// A CA with a server certificate (CN `server-1`), a peer certificate
/// (CN `member`) and a client certificate with CN `root`, in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub server: Pem,
    pub peer: Pem,
    pub root: Pem,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new(dir.path(), "test");
        Pki {
            server: ca.issue("server", "server-1", &HOSTS, Validity::Now),
            peer: ca.issue("peer", "member", &HOSTS, Validity::Now),
            root: ca.issue("root", "root", &[], Validity::Now),
            ca,
            dir,
        }
    }

    /// What a client presenting `client` trusts and shows, as the
    /// etcd-client crate and as rustls (offering HTTP/2) take it.
    pub fn client_options(&self, client: &Pem) -> ClientTls {
        let etcd = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&self.ca.file).expect("CA")))
            .identity(etcd_client::Identity::from_pem(client.cert_pem(), client.key_pem()));
        let mut rustls = rustls_client(&self.ca, Some(client), rustls::DEFAULT_VERSIONS);
        rustls.alpn_protocols = vec![b"h2".to_vec()];
        ClientTls { etcd, rustls: Arc::new(rustls) }
    }

    /// A member's seat with https client URLs (reached as `root`) and,
    /// with `peer_tls`, https peer URLs.
    pub fn seat(&self, name: &str, peer_tls: bool) -> crate::member::Seat {
        let mut seat = crate::member::Seat::new(name);
        seat.client_tls = Some(self.client_options(&self.root));
        seat.peer_tls = peer_tls;
        seat
    }

    /// Client TLS with client certificates required.
    pub fn server_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server.cert.display()),
            format!("--key-file={}", self.server.key.display()),
            format!("--trusted-ca-file={}", self.ca.file.display()),
            "--client-cert-auth".into(),
        ]
    }

    /// Peer TLS with `pem` as the member's certificate: members verify each
    /// other, and only CN `member` may be a peer.
    pub fn peer_flags(&self, pem: &Pem) -> Vec<String> {
        vec![
            format!("--peer-cert-file={}", pem.cert.display()),
            format!("--peer-key-file={}", pem.key.display()),
            format!("--peer-trusted-ca-file={}", self.ca.file.display()),
            "--peer-client-cert-auth".into(),
            "--peer-cert-allowed-cn=member".into(),
        ]
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
