//! A TLS configuration made again when one of its files changes, so that
//! certificates rotated in place (cert-manager, a kubelet's Secret volume
//! swapping its `..data` link) are served to the next connection without a
//! restart; connections already open keep theirs. A half-written rotation
//! (a new certificate beside the old key) keeps the last good
//! configuration and says so, until the files agree again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::{TlsError, TlsInfo};

/// Files are looked at no more often than this.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a file's content without reading it (followed links).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

pub struct Reloading<T> {
    info: TlsInfo,
    build: fn(&TlsInfo) -> Result<T, TlsError>,
    current: Mutex<Arc<T>>,
}

fn stamp(files: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| std::fs::metadata(f).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())))
        .collect()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the configuration now (an error here stops the start), then
    /// watches its files for as long as it is in use.
    pub fn start(info: TlsInfo, build: fn(&TlsInfo) -> Result<T, TlsError>) -> Result<Arc<Self>, TlsError> {
        let seen = stamp(&info.files());
        let current = Mutex::new(Arc::new(build(&info)?));
        let this = Arc::new(Reloading { info, build, current });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(Arc::downgrade(&this), seen));
        }
        Ok(this)
    }

    /// Whether a verified client certificate's common name is a user
    /// (the client plane with --client-cert-auth).
    pub fn names_users(&self) -> bool {
        self.info.plane == super::Plane::Client && self.info.client_cert_auth
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<T> {
        self.current.lock().clone()
    }

    /// Makes the configuration again if the files changed since the last
    /// good one (`seen`); a failed attempt is tried again at the next look
    /// (`failed` holds its error, said once).
    fn check(&self, seen: &mut Stamp, failed: &mut Option<String>) {
        let now = stamp(&self.info.files());
        if now == *seen {
            return;
        }
        match (self.build)(&self.info) {
            Ok(fresh) => {
                *self.current.lock() = Arc::new(fresh);
                *seen = now;
                *failed = None;
                tracing::info!(plane = ?self.info.plane, cert = %self.info.cert_file.display(), "reloaded TLS certificates");
            }
            Err(e) => {
                let error = e.to_string();
                if failed.as_ref() != Some(&error) {
                    tracing::warn!(
                        plane = ?self.info.plane,
                        error = %error,
                        "changed TLS files are not usable (yet): keeping the previous certificates"
                    );
                    *failed = Some(error);
                }
            }
        }
    }
}

/// Looks at the files every `CHECK_EVERY` (off the async threads: it reads
/// files) until the configuration is dropped.
async fn watch<T: Send + Sync + 'static>(reloading: std::sync::Weak<Reloading<T>>, mut seen: Stamp) {
    let mut failed = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(r) = reloading.upgrade() else { return };
        let checked = tokio::task::spawn_blocking(move || {
            r.check(&mut seen, &mut failed);
            (seen, failed)
        })
        .await;
        match checked {
            Ok(state) => (seen, failed) = state,
            Err(_) => return,
        }
    }
}
