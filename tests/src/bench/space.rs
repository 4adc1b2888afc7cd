//! Backend space, side by side: the same writes to etcd and ferrocd, then
//! what each backend takes on disk after loading, after a defragmentation
//! without compaction, after compacting and defragmenting, and after a
//! restart, against the bytes of keys and values it holds; and how many
//! large values each lets in under the same quota.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, GetOptions};

use super::workload::{self, KeySpec, Limit, RunOptions, Workload};
use crate::member::Member;

#[derive(Debug, Clone)]
pub struct SpaceOptions {
    pub etcd: PathBuf,
    pub ferrocd: PathBuf,
}

const KEY_SIZE: usize = 8;
/// High enough that the loads never meet it.
const NO_QUOTA: &[&str] = &["--quota-backend-bytes", "8000000000"];
const QUOTA: u64 = 100_000_000;
const LARGE_VALUE: usize = 1_572_000;

struct Load {
    name: &'static str,
    val_size: usize,
    puts: u64,
    keys: u64,
}

const LOADS: [Load; 3] = [
    Load { name: "256 B values", val_size: 256, puts: 200_000, keys: 40_000 },
    Load { name: "4 KiB values", val_size: 4096, puts: 10_000, keys: 2_000 },
    Load { name: "100 KB values", val_size: 100_000, puts: 2_000, keys: 500 },
];

/// dbSize after each step, and the bytes of keys and values held then.
struct Sizes {
    written: u64,
    live: u64,
    loaded: u64,
    defragged: u64,
    compacted: u64,
    restarted: u64,
}

async fn db_size(c: &mut Client) -> u64 {
    c.status().await.map(|s| s.db_size() as u64).unwrap_or(0)
}

async fn measure(bin: &Path, load: &Load) -> Sizes {
    let mut member = Member::start(bin.to_path_buf(), NO_QUOTA).await;
    let opts = RunOptions {
        endpoints: vec![member.endpoint()],
        tls: None,
        conns: 4,
        clients: 16,
        limit: Limit::Total(load.puts),
        progress: false,
    };
    let keys = KeySpec { key_size: KEY_SIZE, val_size: load.val_size, key_space_size: load.keys, sequential: false };
    if let Err(e) = workload::run(&Workload::Put(keys), &opts).await {
        eprintln!("loading {}: {e}", bin.display());
    }
    let mut c = member.client().await;
    let per_key = (KEY_SIZE + load.val_size) as u64;
    let all = c.get("", Some(GetOptions::new().with_from_key().with_count_only())).await;
    let (count, rev) = all.map(|r| (r.count() as u64, r.header().map_or(0, |h| h.revision()))).unwrap_or((0, 0));
    // Let background write-outs settle before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = db_size(&mut c).await;
    let _ = c.defragment().await;
    let defragged = db_size(&mut c).await;
    // Physical: etcd compacts in the background otherwise, and a defrag
    // right after would copy what compaction has yet to delete.
    let _ = c.compact(rev, Some(CompactionOptions::new().with_physical())).await;
    let _ = c.defragment().await;
    let compacted = db_size(&mut c).await;
    member.stop();
    member.restart().await;
    let mut c = member.client().await;
    let restarted = db_size(&mut c).await;
    Sizes { written: load.puts * per_key, live: count * per_key, loaded, defragged, compacted, restarted }
}

/// Puts distinct 1.5 MB values under a 100 MB quota until refused: how
/// many went in, and dbSize then.
async fn quota_fill(bin: &Path) -> (u64, u64) {
    let member = Member::start(bin.to_path_buf(), &["--quota-backend-bytes", &QUOTA.to_string()]).await;
    let mut c = member.client().await;
    let value = vec![b'v'; LARGE_VALUE];
    let mut stored = 0;
    while stored < 1000 && c.put(format!("large/{stored}"), value.clone(), None).await.is_ok() {
        stored += 1;
    }
    (stored, db_size(&mut c).await)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn times(bytes: u64, of: u64) -> String {
    if of == 0 {
        "n/a".into()
    } else {
        format!("{:.2}x", bytes as f64 / of as f64)
    }
}

pub async fn space(o: &SpaceOptions) -> String {
    let servers = [("etcd", &o.etcd), ("ferrocd", &o.ferrocd)];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| load | server | written | loaded | defrag, no compaction | live after compaction | compact + defrag | after restart |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for load in &LOADS {
        for (name, bin) in servers {
            let s = measure(bin, load).await;
            let _ = writeln!(
                out,
                "| {} ({} puts over {} keys) | {name} | {} | {} ({}) | {} ({}) | {} | {} ({}) | {} |",
                load.name,
                load.puts,
                load.keys,
                mb(s.written),
                mb(s.loaded),
                times(s.loaded, s.written),
                mb(s.defragged),
                times(s.defragged, s.written),
                mb(s.live),
                mb(s.compacted),
                times(s.compacted, s.live),
                mb(s.restarted),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| {} MB quota, {} B values | puts taken | values stored | dbSize then |",
        QUOTA / 1_000_000,
        LARGE_VALUE
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for (name, bin) in servers {
        let (stored, size) = quota_fill(bin).await;
        let _ = writeln!(out, "| {name} | {stored} | {} | {} |", mb(stored * LARGE_VALUE as u64), mb(size));
    }
    out
}
