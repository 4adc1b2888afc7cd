//! rustls configurations from one plane's settings: what ferrocd serves
//! with, and what it dials peers with.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedProtocolVersion};

use super::flags::TlsFlags;
use super::{files, TlsError, TlsInfo};

/// What both planes share: the cipher suites and protocol versions.
#[derive(Debug)]
pub struct Options {
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
}

const VERSIONS: [(&str, &SupportedProtocolVersion); 2] =
    [("TLS1.2", &rustls::version::TLS12), ("TLS1.3", &rustls::version::TLS13)];

impl Options {
    pub fn from_flags(flags: &TlsFlags) -> Result<Options, TlsError> {
        let version = |flag: &str, v: &str| {
            VERSIONS.iter().position(|(name, _)| *name == v).ok_or_else(|| {
                TlsError::Config(format!(
                    "--{flag} {v:?} is not supported: use TLS1.2 or TLS1.3 (TLS 1.0 and 1.1 are not offered)"
                ))
            })
        };
        let min = version("tls-min-version", &flags.tls_min_version)?;
        let max = match flags.tls_max_version.as_str() {
            "" => VERSIONS.len() - 1,
            v => version("tls-max-version", v)?,
        };
        if min > max {
            return Err(TlsError::Config(format!(
                "--tls-min-version {} is above --tls-max-version {}",
                flags.tls_min_version, flags.tls_max_version
            )));
        }
        let mut provider = provider();
        if !flags.cipher_suites.is_empty() {
            if min == VERSIONS.len() - 1 {
                return Err(TlsError::Config("--cipher-suites cannot be set when only TLS1.3 is enabled".into()));
            }
            provider.cipher_suites = cipher_suites(&provider, &flags.cipher_suites)?;
        }
        Ok(Options { provider: Arc::new(provider), versions: VERSIONS[min..=max].iter().map(|(_, v)| *v).collect() })
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }
}

/// ring, the provider kube's client uses too (one in the workspace); it
/// has no post-quantum key exchange, which etcd 3.5's Go TLS and its
/// clients do not offer either.
fn provider() -> CryptoProvider {
    #[allow(deprecated)]
    ring::default_provider()
}

/// TLS 1.2 suites by Go's names (etcd's flag), plus every TLS 1.3 suite.
fn cipher_suites(provider: &CryptoProvider, names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, TlsError> {
    let tls12: Vec<_> = provider.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS12).collect();
    let name_of = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
    let mut chosen: Vec<_> =
        provider.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS13).copied().collect();
    let mut any_tls12 = false;
    for name in names.iter().filter(|n| !n.is_empty()) {
        // Go also names the ChaCha20 suites without their hash.
        let wanted = if name.ends_with("_CHACHA20_POLY1305") { format!("{name}_SHA256") } else { name.clone() };
        match tls12.iter().find(|s| name_of(s) == wanted) {
            Some(s) => {
                chosen.push(**s);
                any_tls12 = true;
            }
            // Suites Go knows that rustls leaves out (CBC, RSA key
            // exchange, RC4, 3DES): etcd would start with them, so skip.
            None if GO_ONLY_SUITES.contains(&name.as_str()) => {
                tracing::warn!(suite = %name, "--cipher-suites: not offered by ferrocd (rustls has no CBC, RSA key exchange, RC4 or 3DES suites); skipped")
            }
            None => {
                let known: Vec<_> = tls12.iter().map(|s| name_of(s)).collect();
                return Err(TlsError::Config(format!(
                    "--cipher-suites: {name:?} is not supported; choose from {}",
                    known.join(", ")
                )));
            }
        }
    }
    if !any_tls12 {
        return Err(TlsError::Config(
            "--cipher-suites names no TLS 1.2 suite ferrocd offers (the ECDHE AES-GCM and ChaCha20 ones)".into(),
        ));
    }
    Ok(chosen)
}

/// TLS 1.2 suites by Go's names that rustls does not implement.
const GO_ONLY_SUITES: [&str; 16] = [
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// What a member serves with on one plane.
pub fn server_config(info: &TlsInfo) -> Result<rustls::ServerConfig, TlsError> {
    let opts = &info.options;
    let builder = rustls::ServerConfig::builder_with_provider(opts.provider.clone())
        .with_protocol_versions(&opts.versions)
        .map_err(TlsError::config)?;
    // A trusted CA means client certificates are required, as in etcd
    // (Go's RequireAndVerifyClientCert whenever a CA file is given).
    let verifier: Arc<dyn ClientCertVerifier> = match &info.trusted_ca_file {
        Some(ca) => {
            let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(files::roots(ca)?), opts.provider.clone());
            if let Some(crl) = &info.crl_file {
                // As etcd: a certificate of the chain whose serial the list
                // names is refused; issuers the list does not cover are not
                // judged.
                b = b.with_crls(files::crls(crl)?).allow_unknown_revocation_status();
            }
            let inner = b.build().map_err(TlsError::config)?;
            if info.allowed_cns.is_empty() && info.allowed_hostname.is_none() {
                inner
            } else {
                Arc::new(AllowedPeers { inner, cns: info.allowed_cns.clone(), hostname: info.allowed_hostname.clone() })
            }
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let (chain, key) = pair(&info.cert_file, &info.key_file, &opts.provider)?;
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| mismatch(&info.cert_file, &info.key_file, e))?;
    // gRPC, and HTTP/1 for /health, /metrics and friends.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What a member dials its peers with: its peer certificate as the client
/// certificate, the peer CA to verify them.
pub fn client_config(info: &TlsInfo) -> Result<rustls::ClientConfig, TlsError> {
    let opts = &info.options;
    let builder = rustls::ClientConfig::builder_with_provider(opts.provider.clone())
        .with_protocol_versions(&opts.versions)
        .map_err(TlsError::config)?;
    let builder =
        match (&info.trusted_ca_file, info.self_signed) {
            (Some(ca), _) => builder.with_root_certificates(files::roots(ca)?),
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SelfSignedPeers { algorithms: opts.algorithms() })),
            (None, false) => return Err(TlsError::Config(
                "--peer-trusted-ca-file is needed to verify the other members' certificates (or use --peer-auto-tls)"
                    .into(),
            )),
        };
    let (chain, key) = pair(&info.cert_file, &info.key_file, &opts.provider)?;
    let mut config =
        builder.with_client_auth_cert(chain, key).map_err(|e| mismatch(&info.cert_file, &info.key_file, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What a client dials a member's client URL with (`ferrocdutl`): the CA
/// that signed the member's certificate, and a client certificate if the
/// member asks for one.
pub fn dial_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::config)?
        .with_root_certificates(files::roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => {
            let (chain, key_der) = pair(cert, key, &provider)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| mismatch(cert, key, e))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A certificate chain and the key that belongs to it.
fn pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = files::cert_chain(cert)?;
    let key_der = files::key(key)?;
    let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), provider)
        .map_err(|e| mismatch(cert, key, e))?;
    certified.keys_match().map_err(|e| mismatch(cert, key, e))?;
    Ok((chain, key_der))
}

fn mismatch(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch { cert: cert.into(), key: key.into() },
        e => TlsError::Invalid { what: "key", path: key.into(), reason: e.to_string() },
    }
}

/// `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`: a peer's
/// certificate must be valid and carry one of these names.
#[derive(Debug)]
struct AllowedPeers {
    inner: Arc<dyn ClientCertVerifier>,
    cns: Vec<String>,
    hostname: Option<String>,
}

impl AllowedPeers {
    fn allows(&self, cert: &CertificateDer<'_>) -> bool {
        let cn_ok = files::common_name(cert).is_some_and(|cn| self.cns.contains(&cn));
        let host_ok = self.hostname.as_ref().is_some_and(|h| {
            let (Ok(name), Ok(ee)) = (ServerName::try_from(h.as_str()), webpki::EndEntityCert::try_from(cert)) else {
                return false;
            };
            ee.verify_is_valid_for_subject_name(&name).is_ok()
        });
        cn_ok || host_ok
    }
}

impl ClientCertVerifier for AllowedPeers {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.allows(end_entity) {
            return Ok(verified);
        }
        Err(rustls::Error::General(format!(
            "peer certificate (CN {:?}) matches neither --peer-cert-allowed-cn {:?} nor --peer-cert-allowed-hostname {:?}",
            files::common_name(end_entity).unwrap_or_default(),
            self.cns,
            self.hostname.as_deref().unwrap_or("")
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `--peer-auto-tls` without a CA: as etcd, members accept each other's
/// self-signed certificates (the handshake's signatures are still checked).
#[derive(Debug)]
struct SelfSignedPeers {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SelfSignedPeers {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
