//! TLS for the client and peer planes, as etcd's flags describe them:
//! rustls (ring) for both, certificates re-read when their files change
//! (cert-manager and kubelet rotate them in place), client certificates
//! verified against the trusted CA (and CRL), the verified common name as
//! the auth user, and refusals logged without disturbing anyone else.

mod accept;
mod auto;
mod build;
mod connect;
mod files;
pub mod flags;
mod reload;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use accept::{incoming, Incoming};
pub use build::dial_config;
pub use connect::{ClientTls, Connector};
pub use flags::TlsFlags;
pub use reload::Reloading;
pub use stream::{Conn, ConnInfo};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no {expected}")]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("{what} {path} is not valid: {reason}")]
    Invalid { what: &'static str, path: PathBuf, reason: String },
    #[error("certificate {path} has expired (valid until {not_after})")]
    Expired { path: PathBuf, not_after: String },
    #[error("key {key} does not match certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{0}")]
    Config(String),
    #[error("cannot make self-signed certificates in {dir}: {reason}")]
    Auto { dir: PathBuf, reason: String },
}

impl TlsError {
    fn config(e: impl std::fmt::Display) -> TlsError {
        TlsError::Config(e.to_string())
    }
}

/// Which traffic a TLS setting is for; names the flags in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Client,
    Peer,
}

impl Plane {
    fn flag(self, name: &str) -> String {
        match self {
            Plane::Client => format!("--{name}"),
            Plane::Peer => format!("--peer-{name}"),
        }
    }
}

/// One plane's TLS settings (etcd's `transport.TLSInfo`).
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub plane: Plane,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// As etcd's: with a trusted CA, every client of this plane must
    /// present a certificate it signed (`--client-cert-auth` or not).
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth` (which needs the CA).
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// Peers only: the common names / host name a peer's certificate must have.
    pub allowed_cns: Vec<String>,
    pub allowed_hostname: Option<String>,
    /// Made by --auto-tls / --peer-auto-tls: as etcd, the other side's
    /// certificate is not verified (it is self-signed too).
    pub self_signed: bool,
    pub options: Arc<build::Options>,
}

impl TlsInfo {
    /// The files whose change means the configuration must be made again.
    fn files(&self) -> Vec<PathBuf> {
        [Some(&self.cert_file), Some(&self.key_file), self.trusted_ca_file.as_ref(), self.crl_file.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Both planes' TLS, from the flags; None where the plane has none.
#[derive(Clone, Default)]
pub struct Tls {
    pub client: Option<Arc<Reloading<rustls::ServerConfig>>>,
    pub peer_server: Option<Arc<Reloading<rustls::ServerConfig>>>,
    pub peer_client: Option<Arc<Reloading<rustls::ClientConfig>>>,
}

impl Tls {
    /// Reads and checks every file now, so that a bad one stops the start.
    /// `client_hosts`/`peer_hosts` name the certificates --auto-tls makes;
    /// `dials_https`: some peer URL is `https://` (only then is a peer CA
    /// needed to dial).
    pub fn load(
        flags: &TlsFlags,
        data_dir: &Path,
        client_hosts: &[String],
        peer_hosts: &[String],
        dials_https: bool,
    ) -> Result<Tls, TlsError> {
        let options = Arc::new(build::Options::from_flags(flags)?);
        let client = plane_info(flags, Plane::Client, data_dir, client_hosts, &options)?;
        let peer = plane_info(flags, Plane::Peer, data_dir, peer_hosts, &options)?;
        Ok(Tls {
            client: client.as_ref().map(|i| Reloading::start(i.clone(), build::server_config)).transpose()?,
            peer_server: peer.as_ref().map(|i| Reloading::start(i.clone(), build::server_config)).transpose()?,
            peer_client: peer
                .as_ref()
                .filter(|_| dials_https)
                .map(|i| Reloading::start(i.clone(), build::client_config))
                .transpose()?,
        })
    }
}

fn plane_info(
    flags: &TlsFlags,
    plane: Plane,
    data_dir: &Path,
    hosts: &[String],
    options: &Arc<build::Options>,
) -> Result<Option<TlsInfo>, TlsError> {
    let (cert, key, ca, cert_auth, crl, auto) = match plane {
        Plane::Client => (
            &flags.cert_file,
            &flags.key_file,
            &flags.trusted_ca_file,
            flags.client_cert_auth,
            &flags.client_crl_file,
            flags.auto_tls,
        ),
        Plane::Peer => (
            &flags.peer_cert_file,
            &flags.peer_key_file,
            &flags.peer_trusted_ca_file,
            flags.peer_client_cert_auth,
            &flags.peer_crl_file,
            flags.peer_auto_tls,
        ),
    };
    let (cert_file, key_file, self_signed) = match (cert, key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        (None, None) if auto => {
            let dir = data_dir.join("fixtures").join(match plane {
                Plane::Client => "client",
                Plane::Peer => "peer",
            });
            let (c, k) = auto::self_signed(&dir, hosts, flags.self_signed_cert_validity)?;
            (c, k, true)
        }
        (None, None) => return Ok(None),
        _ => {
            return Err(TlsError::Config(format!(
                "{} and {} must be given together",
                plane.flag("cert-file"),
                plane.flag("key-file")
            )))
        }
    };
    if cert_auth && ca.is_none() {
        return Err(TlsError::Config(format!(
            "{} needs {} to verify certificates with",
            plane.flag("client-cert-auth"),
            plane.flag("trusted-ca-file")
        )));
    }
    let (allowed_cns, allowed_hostname) = match plane {
        Plane::Client => (Vec::new(), None),
        Plane::Peer => (
            flags.peer_cert_allowed_cn.iter().filter(|c| !c.is_empty()).cloned().collect(),
            flags.peer_cert_allowed_hostname.clone().filter(|h| !h.is_empty()),
        ),
    };
    if (!allowed_cns.is_empty() || allowed_hostname.is_some()) && ca.is_none() {
        return Err(TlsError::Config(
            "--peer-cert-allowed-cn and --peer-cert-allowed-hostname need --peer-trusted-ca-file".into(),
        ));
    }
    Ok(Some(TlsInfo {
        plane,
        cert_file,
        key_file,
        trusted_ca_file: ca.clone(),
        client_cert_auth: cert_auth,
        crl_file: crl.clone(),
        allowed_cns,
        allowed_hostname,
        self_signed,
        options: options.clone(),
    }))
}
