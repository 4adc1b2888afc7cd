//! The data directory and the member's identity: `member/wal`, `member/snap`
//! and the backend under `member/db`; IDs fixed at the first start and kept
//! in the backend so a restart with other flags keeps its identity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;

use crate::config::{ClusterState, Config, ConfigError, InitialMember};
use crate::ids;
use crate::membership::{Members, Membership};
use crate::mvcc::{MvccError, Store};
use crate::proto::ferrocdpb::{ClusterRequest, ConfChangeContext, MemberRecord};
use crate::transport::{self, PeerHeader, PeerTls};

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
    #[error("cannot join the cluster: {0}")]
    Join(String),
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
    /// The founders of a new cluster with the context of each one's conf
    /// change (the raft node writes them as the log's first entries).
    pub initial_members: Vec<(u64, Vec<u8>)>,
}

fn record_of(m: &InitialMember, token: &str) -> MemberRecord {
    MemberRecord {
        id: ids::member_id(m, token),
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: Vec::new(),
        is_learner: false,
    }
}

/// Who this member is. A data dir that holds a member keeps its identity
/// whatever the flags say (as etcd's does); a new member of a new cluster
/// derives the IDs from the flags; a member joining an existing cluster
/// learns them from its peers.
pub async fn identity(
    cfg: &Config,
    members: &[InitialMember],
    store: &Store,
    membership: &Membership,
    peer_tls: Option<&PeerTls>,
) -> Result<Identity, BootstrapError> {
    let token = &cfg.initial_cluster_token;
    let records: Vec<MemberRecord> = members.iter().map(|m| record_of(m, token)).collect();
    let voters: Vec<u64> = records.iter().map(|r| r.id).collect();
    let me = records.iter().find(|r| r.name == cfg.name).map(|r| r.id).unwrap_or_default();
    let initial_members = || {
        records
            .iter()
            .map(|r| (r.id, ConfChangeContext { proposal_id: 0, member: Some(r.clone()) }.encode_to_vec()))
            .collect()
    };
    let stored = |name| -> Result<Option<u64>, MvccError> {
        Ok(store.meta(name)?.and_then(|v| v.as_slice().try_into().ok()).map(u64::from_be_bytes))
    };
    if let (Some(member_id), Some(cluster_id)) = (stored(META_MEMBER_ID)?, stored(META_CLUSTER_ID)?) {
        if member_id != me {
            tracing::warn!(
                stored = format!("{member_id:x}"),
                from_flags = format!("{me:x}"),
                "data dir was created with other cluster flags; keeping its identity"
            );
        }
        // Data dirs from before the membership was stored held one member.
        if membership.current().members.is_empty() && member_id == me {
            let mut seeded = Members::default();
            for r in records.iter().filter(|r| r.id == me) {
                seeded.members.insert(r.id, r.clone());
            }
            membership.seed(store, seeded)?;
        }
        let founders = if cfg.initial_cluster_state == ClusterState::New { initial_members() } else { Vec::new() };
        return Ok(Identity { member_id, cluster_id, initial_members: founders });
    }
    let id = match cfg.initial_cluster_state {
        ClusterState::New => {
            Identity { member_id: me, cluster_id: ids::cluster_id(&voters), initial_members: initial_members() }
        }
        ClusterState::Existing => join(cfg, members, store, membership, peer_tls).await?,
    };
    store.put_meta_durable(META_MEMBER_ID, &id.member_id.to_be_bytes())?;
    store.put_meta_durable(META_CLUSTER_ID, &id.cluster_id.to_be_bytes())?;
    Ok(id)
}

/// How long a joining member keeps asking its peers for the cluster.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Learns the cluster from the peers `--initial-cluster` lists and checks
/// that it knows this member (added with `member add`) at these peer URLs.
async fn join(
    cfg: &Config,
    members: &[InitialMember],
    store: &Store,
    membership: &Membership,
    peer_tls: Option<&PeerTls>,
) -> Result<Identity, BootstrapError> {
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    advertised.sort();
    let peers: Vec<&String> = members.iter().filter(|m| m.name != cfg.name).flat_map(|m| &m.peer_urls).collect();
    if peers.is_empty() {
        return Err(BootstrapError::Join(
            "--initial-cluster-state existing needs the cluster's other members in --initial-cluster".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut last_error = String::new();
    let info = 'found: loop {
        for url in &peers {
            match transport::client(url, PeerHeader::new(0, 0), peer_tls) {
                Ok(mut c) => match c.cluster(ClusterRequest {}).await {
                    Ok(info) => break 'found info.into_inner(),
                    Err(e) => last_error = format!("{url}: {}", e.message()),
                },
                Err(e) => last_error = e.to_string(),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BootstrapError::Join(format!(
                "could not get the cluster's members from any peer in --initial-cluster ({last_error})"
            )));
        }
        tracing::warn!(error = %last_error, "cannot reach the cluster to join yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let remote = Members::from_record(info.membership.unwrap_or_default());
    // Every member the flags name must be in the cluster at those URLs.
    for m in members {
        if remote.with_peer_urls(&m.peer_urls).is_none() {
            return Err(BootstrapError::Join(format!(
                "--initial-cluster names {:?} at {:?}, but the cluster has no member with those peer URLs \
                 (add this member first with `etcdctl member add`, and check --initial-cluster)",
                m.name, m.peer_urls
            )));
        }
    }
    let record = remote
        .with_peer_urls(&advertised)
        .ok_or_else(|| BootstrapError::Join(format!("the cluster has no member with peer URLs {advertised:?}")))?;
    let me = record.id;
    // A member that has started before has a history this empty data dir
    // lacks (its votes, its log): joining under its identity could break
    // raft's guarantees. It must be removed and added again.
    if !record.name.is_empty() {
        return Err(BootstrapError::Join(format!(
            "member {me:x} has already been bootstrapped (as {:?}), but this data dir is empty: its data is lost; \
             remove the member (`etcdctl member remove {me:x}`) and add it again",
            record.name
        )));
    }
    tracing::info!(
        member_id = format!("{me:x}"),
        cluster_id = format!("{:x}", info.cluster_id),
        members = remote.members.len(),
        "joining an existing cluster"
    );
    membership.seed(store, remote)?;
    Ok(Identity { member_id: me, cluster_id: info.cluster_id, initial_members: Vec::new() })
}
