//! Reading certificates, keys, CAs and CRLs from PEM files, with errors
//! that name the file and what is wrong with it.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

fn invalid(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid { what, path: path.to_path_buf(), reason: reason.to_string() }
}

/// Every certificate of a PEM file (a chain: the leaf first).
pub fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "PEM certificate" });
    }
    for der in &certs {
        X509Certificate::from_der(der).map_err(|e| invalid(what, path, e))?;
    }
    Ok(certs)
}

/// A certificate chain that is valid now.
pub fn cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = certs("certificate", path)?;
    check_validity(path, &chain[0])?;
    Ok(chain)
}

pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { what: "key", path: path.to_path_buf(), expected: "PEM private key" }
        }
        e => invalid("key", path, e),
    })
}

pub fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let what = "certificate revocation list";
    let pem = read(what, path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, e))?;
    if crls.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "PEM X509 CRL" });
    }
    Ok(crls)
}

pub fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let what = "trusted CA file";
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(what, path)? {
        roots.add(cert).map_err(|e| invalid(what, path, e))?;
    }
    Ok(roots)
}

fn check_validity(path: &Path, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| invalid("certificate", path, e))?;
    let now = UnixTime::now().as_secs() as i64;
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        return Err(TlsError::Expired { path: path.to_path_buf(), not_after: validity.not_after.to_string() });
    }
    // (Not yet valid is left to the clients: a node clock a few seconds
    // behind the issuer's must not refuse a fresh rotation.)
    Ok(())
}

/// The subject's common name of a certificate, if it has one: the last,
/// as Go's `pkix.Name.CommonName` (which etcd uses) takes it.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().last()?.as_str().ok()?.to_string();
    Some(cn)
}
