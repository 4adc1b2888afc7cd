//! The storage layer's errors.

use crate::error::EtcdError;

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("backend: {0}")]
    Backend(#[from] sled::Error),
    #[error("backend is corrupt: {0}")]
    Corrupt(String),
}

impl MvccError {
    /// Whether this says the backend's files are damaged (not an I/O
    /// failure or a request's error).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            MvccError::Corrupt(_) | MvccError::Backend(sled::Error::Corruption { .. } | sled::Error::ReportableBug(_))
        )
    }
}

impl From<MvccError> for EtcdError {
    fn from(e: MvccError) -> EtcdError {
        match e {
            MvccError::Compacted => EtcdError::Compacted,
            MvccError::FutureRev => EtcdError::FutureRev,
            other => EtcdError::Internal(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, MvccError>;
