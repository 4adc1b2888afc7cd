//! `--auto-tls` / `--peer-auto-tls`: a self-signed certificate for the
//! hosts of the plane's URLs, made once under the data dir
//! (`fixtures/client`, `fixtures/peer`, as etcd does) and kept.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::TlsError;

pub fn self_signed(dir: &Path, hosts: &[String], years: u32) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let fail = |reason: String| TlsError::Auto { dir: dir.to_path_buf(), reason };
    let mut names: Vec<String> = hosts.to_vec();
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now
        .checked_add(time::Duration::days(365 * i64::from(years.max(1))))
        .ok_or_else(|| fail(format!("--self-signed-cert-validity {years} years is too long")))?;
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    // Private, as the data dir this makes first is.
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| fail(e.to_string()))?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed certificate (auto TLS)");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
