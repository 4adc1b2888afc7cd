//! A cluster's TLS: which Secret each plane's certificate comes from,
//! issuing them from a CA of the cluster's own when the spec names none,
//! and the identity the operator calls members with.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use crate::crd::{ClusterTls, TlsSource};
use crate::names::Names;

/// Keys of a `kubernetes.io/tls` Secret (and cert-manager's `ca.crt`).
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";
/// The CA's own key, in the CA Secret only.
const CA_PRIVATE_KEY: &str = "ca.key";
/// How long issued certificates last.
const VALIDITY_DAYS: i64 = 365;
const CA_VALIDITY_DAYS: i64 = 10 * 365;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Secret {secret} has no {key}")]
    MissingKey { secret: String, key: &'static str },
    #[error(
        "Secret {ca} (this cluster's CA) is gone while certificates it issued remain: restore it, or delete the \
         cluster's issued TLS Secrets too so that all are issued again (members restart onto them)"
    )]
    CaLost { ca: String },
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// The Secrets of one cluster's TLS, as the spec decides them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Secrets {
    pub client: Option<String>,
    pub peer: Option<String>,
    /// The operator's client certificate (client TLS only).
    pub operator: Option<String>,
}

impl Secrets {
    pub fn of(names: &Names, tls: Option<&ClusterTls>) -> Secrets {
        let Some(tls) = tls else { return Secrets::default() };
        let named = |s: &TlsSource, generated: String| s.secret_name.clone().unwrap_or(generated);
        Secrets {
            client: tls.client.as_ref().map(|s| named(s, format!("{}-client-tls", names.cluster))),
            peer: tls.peer.as_ref().map(|s| named(s, format!("{}-peer-tls", names.cluster))),
            operator: tls
                .client
                .as_ref()
                .map(|s| s.operator_secret_name.clone().unwrap_or_else(|| format!("{}-operator-tls", names.cluster))),
        }
    }
}

impl Secrets {
    /// What the status says is in use.
    pub fn status(&self) -> Option<crate::crd::TlsStatus> {
        (self.client.is_some() || self.peer.is_some()).then(|| crate::crd::TlsStatus {
            client_secret: self.client.clone(),
            peer_secret: self.peer.clone(),
            operator_secret: self.operator.clone(),
        })
    }
}

/// The Secret holding the cluster's own CA.
pub fn ca_secret(names: &Names) -> String {
    format!("{}-ca", names.cluster)
}

/// What the operator must issue: (Secret, common name, client only) for
/// each plane whose Secret the spec does not name.
pub fn to_issue(names: &Names, tls: Option<&ClusterTls>) -> Vec<(String, String, bool)> {
    let Some(tls) = tls else { return Vec::new() };
    let secrets = Secrets::of(names, Some(tls));
    let mut out = Vec::new();
    if let (Some(s), Some(name)) = (&tls.client, &secrets.client) {
        if s.secret_name.is_none() {
            out.push((name.clone(), names.cluster.clone(), false));
            out.push((secrets.operator.clone().unwrap_or_default(), "root".into(), true));
        }
    }
    if let (Some(cn), Some(name)) = (issued_peer_cn(names, Some(tls)), &secrets.peer) {
        out.push((name.clone(), cn, false));
    }
    out
}

/// The common name of the peer certificate the operator issues, when it
/// issues it (members then accept only that CN as a peer).
pub fn issued_peer_cn(names: &Names, tls: Option<&ClusterTls>) -> Option<String> {
    let peer = tls?.peer.as_ref()?;
    peer.secret_name.is_none().then(|| format!("{}-peer", names.cluster))
}

/// The host names a member certificate is valid for: every member's DNS
/// name and the client Service's.
fn hosts(names: &Names) -> Vec<String> {
    let (peers, ns, client) = (names.peer_service(), &names.namespace, names.client_service());
    let mut hosts = vec![format!("*.{peers}.{ns}.svc"), format!("*.{peers}.{ns}.svc.cluster.local")];
    for h in [
        client.clone(),
        format!("{client}.{ns}"),
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
    ] {
        hosts.push(h);
    }
    hosts.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    hosts
}

/// A new CA: (certificate PEM, key PEM).
pub fn new_ca(names: &Names) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, format!("{} {} CA", names.namespace, names.cluster));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA Secret's data.
pub fn ca_data(cert: &str, key: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (CA_KEY.to_string(), ByteString(cert.as_bytes().to_vec())),
        (CA_PRIVATE_KEY.to_string(), ByteString(key.as_bytes().to_vec())),
    ])
}

/// A certificate signed by the CA in `ca` (its Secret's data), for a
/// member (server and client use, valid for the cluster's host names) or,
/// with `client_only`, for the operator: a `kubernetes.io/tls` Secret's data.
pub fn issue(
    names: &Names,
    ca_secret_name: &str,
    ca: &BTreeMap<String, ByteString>,
    common_name: &str,
    client_only: bool,
) -> Result<BTreeMap<String, ByteString>, TlsError> {
    let get = |key: &'static str| -> Result<String, TlsError> {
        ca.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or(TlsError::MissingKey { secret: ca_secret_name.to_string(), key })
    };
    let (ca_pem, ca_key_pem) = (get(CA_KEY)?, get(CA_PRIVATE_KEY)?);
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(if client_only { Vec::new() } else { hosts(names) })?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = if client_only {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    };
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    Ok(BTreeMap::from([
        (CERT_KEY.to_string(), ByteString(cert.pem().into_bytes())),
        (KEY_KEY.to_string(), ByteString(key.serialize_pem().into_bytes())),
        (CA_KEY.to_string(), ByteString(ca_pem.into_bytes())),
    ]))
}

/// The operator's client identity from its Secret: how it connects to
/// members (verifying them as the client Service's name, which every
/// member certificate carries).
pub fn client_options(names: &Names, secret: &Secret) -> Result<etcd_client::TlsOptions, TlsError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &'static str| -> Result<Vec<u8>, TlsError> {
        data.get(key).map(|b| b.0.clone()).ok_or(TlsError::MissingKey { secret: name.clone(), key })
    };
    Ok(etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(get(CA_KEY)?))
        .identity(etcd_client::Identity::from_pem(get(CERT_KEY)?, get(KEY_KEY)?))
        .domain_name(format!("{}.{}.svc", names.client_service(), names.namespace)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_the_cluster_ca_as_issuer_and_every_member() {
        let names = Names::new("main", "db");
        let (ca, key) = new_ca(&names).expect("CA");
        let data = issue(&names, "main-ca", &ca_data(&ca, &key), "main", false).expect("issue");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&data[CERT_KEY].0).expect("PEM");
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).expect("parse");
        let sans = format!("{:?}", cert.subject_alternative_name().expect("SAN").expect("SAN").value);
        assert!(sans.contains("*.main.db.svc") && sans.contains("main-client.db.svc"), "{sans}");
        assert_eq!(data[CA_KEY].0, ca.as_bytes());
        let issuer = cert.issuer().to_string();
        assert!(issuer.contains("db main CA"), "{issuer}");
        assert!(issue(&names, "main-ca", &BTreeMap::new(), "x", true).is_err(), "no CA: an error, not a panic");
    }
}
