//! The data directory and the member's identity: `member/wal`, `member/snap`
//! and the backend under `member/db`; IDs fixed at the first start and kept
//! in the backend so a restart with other flags keeps its identity.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, InitialMember};
use crate::ids;
use crate::mvcc::{MvccError, Store};

const META_MEMBER_ID: &str = "member_id";
const META_CLUSTER_ID: &str = "cluster_id";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the backend: {0}")]
    Backend(#[from] MvccError),
    #[error(
        "the backend {path} is damaged: {source}. Restore this member's data dir from a snapshot \
         (ferrocdutl snapshot restore), or, in a cluster, remove this member and add it back with an empty \
         data dir; `ferrocdutl check --data-dir DIR` lists what is damaged"
    )]
    BackendDamaged { path: PathBuf, source: MvccError },
}

impl BootstrapError {
    /// A backend error at start-up, naming the file and the way out when
    /// the files are damaged.
    pub fn backend(path: &Path) -> impl Fn(MvccError) -> BootstrapError + '_ {
        move |source| match source.is_damage() {
            true => BootstrapError::BackendDamaged { path: path.to_path_buf(), source },
            false => BootstrapError::Backend(source),
        }
    }
}

pub struct DataDir {
    pub wal: PathBuf,
    pub snap: PathBuf,
    pub backend: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Result<DataDir, BootstrapError> {
        let member = root.join("member");
        let dirs = DataDir { wal: member.join("wal"), snap: member.join("snap"), backend: member.join("db") };
        for dir in [&dirs.wal, &dirs.snap] {
            create_private_dir(dir)?;
        }
        Ok(dirs)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), BootstrapError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BootstrapError::DataDir { path: dir.to_path_buf(), source })
}

pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    pub voters: Vec<u64>,
}

/// Derives the IDs from the flags on first start and persists them; later
/// starts use the persisted ones.
pub fn identity(cfg: &Config, members: &[InitialMember], store: &Store) -> Result<Identity, BootstrapError> {
    let voters: Vec<u64> = members.iter().map(|m| ids::member_id(m, &cfg.initial_cluster_token)).collect();
    let me = members.iter().position(|m| m.name == cfg.name).map(|i| voters[i]).unwrap_or_default();
    let stored = |name| -> Result<Option<u64>, MvccError> {
        Ok(store.meta(name)?.and_then(|v| v.as_slice().try_into().ok()).map(u64::from_be_bytes))
    };
    match (stored(META_MEMBER_ID)?, stored(META_CLUSTER_ID)?) {
        (Some(member_id), Some(cluster_id)) => {
            if member_id != me {
                tracing::warn!(
                    stored = member_id,
                    from_flags = me,
                    "data dir was created with other cluster flags; keeping its identity"
                );
            }
            Ok(Identity { member_id, cluster_id, voters })
        }
        _ => {
            let cluster_id = ids::cluster_id(&voters);
            store.put_meta_durable(META_MEMBER_ID, &me.to_be_bytes())?;
            store.put_meta_durable(META_CLUSTER_ID, &cluster_id.to_be_bytes())?;
            Ok(Identity { member_id: me, cluster_id, voters })
        }
    }
}
