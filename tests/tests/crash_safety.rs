//! Nothing acknowledged is lost: concurrent writers, `kill -9` at random
//! moments, a torn WAL tail, clean stops and restarts after snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use ferrocd_tests::member::Member;
use rand::Rng;

/// Acknowledged writes: key -> (value, revision the server reported).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

const WRITERS: usize = 16;

/// Writers put unique keys until the member dies; each put the server
/// acknowledged is recorded with its revision.
async fn write_until_killed(member: &mut Member, round: usize, acked: &Acked) {
    let endpoint = member.endpoint();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let endpoint = endpoint.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = etcd_client::Client::connect([endpoint], None).await else {
                return;
            };
            for seq in 0.. {
                let key = format!("r{round}/w{w:02}/{seq:06}");
                let value = format!("value-{round}-{w}-{seq}");
                match tokio::time::timeout(Duration::from_secs(5), c.put(key.clone(), value.clone(), None)).await {
                    Ok(Ok(resp)) => {
                        let rev = resp.header().expect("header").revision();
                        acked.lock().expect("lock").insert(key, (value, rev));
                    }
                    _ => return,
                }
            }
        }));
    }
    let pause = rand::rng().random_range(300..1200);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    member.kill();
    for t in tasks {
        let _ = t.await;
    }
}

async fn verify(member: &Member, acked: &Acked) {
    let mut c = member.client().await;
    let expected = acked.lock().expect("lock").clone();
    let max_acked = expected.values().map(|(_, rev)| *rev).max().unwrap_or(0);
    let all = c.get("r", Some(GetOptions::new().with_prefix())).await.expect("range");
    assert!(
        all.header().expect("header").revision() >= max_acked,
        "revision went backwards: {} < acknowledged {max_acked}",
        all.header().expect("header").revision()
    );
    let found: BTreeMap<&[u8], (&[u8], i64)> =
        all.kvs().iter().map(|kv| (kv.key(), (kv.value(), kv.mod_revision()))).collect();
    for (key, (value, rev)) in &expected {
        let got = found.get(key.as_bytes()).unwrap_or_else(|| panic!("acknowledged write {key} (rev {rev}) was lost"));
        assert_eq!(got, &(value.as_bytes(), *rev), "acknowledged write {key} changed");
    }
    // Revisions are unique: no two keys share a (create) revision in this workload.
    let mut revs: Vec<i64> = all.kvs().iter().map(|kv| kv.mod_revision()).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), all.kvs().len(), "two writes got the same revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_loses_no_acknowledged_write() {
    // A small snapshot count makes snapshots (and log compaction) happen
    // between the kills too.
    let mut member = Member::ferrocd(&["--snapshot-count", "300"]).await;
    let acked: Acked = Arc::default();
    for round in 0..5 {
        write_until_killed(&mut member, round, &acked).await;
        member.restart().await;
        verify(&member, &acked).await;
    }
    let total = acked.lock().expect("lock").len();
    assert!(total > 500, "the workload wrote too little to prove anything ({total} writes)");
    let snaps = std::fs::read_dir(member.data_dir().join("member/snap")).expect("snap dir").count();
    assert!(snaps > 1, "expected snapshot files after {total} writes");
}

#[tokio::test]
async fn torn_wal_tail_is_repaired() {
    let mut member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    let put = c.put("before", "crash", None).await.expect("put");
    let rev = put.header().expect("header").revision();
    member.kill();
    // A crash in the middle of a write leaves a partial record after the
    // last good one (here past the segment's zero-filled preallocation,
    // as stale blocks could after a crash): it is cut, nothing else.
    let wal_dir = member.data_dir().join("member/wal");
    let mut segments: Vec<_> =
        std::fs::read_dir(&wal_dir).expect("wal dir").map(|e| e.expect("entry").path()).collect();
    segments.sort();
    let tail = segments.last().expect("a wal segment");
    let mut bytes = std::fs::read(tail).expect("read wal");
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(tail, &bytes).expect("write wal");
    member.restart().await;
    let mut c = member.client().await;
    let got = c.get("before", None).await.expect("get");
    assert_eq!((got.kvs()[0].value(), got.kvs()[0].mod_revision()), (&b"crash"[..], rev));
    let next = c.put("after", "repair", None).await.expect("put after repair");
    assert_eq!(next.header().expect("header").revision(), rev + 1);
}

#[tokio::test]
async fn clean_stop_and_restart_keep_everything() {
    let mut member = Member::ferrocd(&["--snapshot-count", "50"]).await;
    let mut c = member.client().await;
    for i in 0..200 {
        c.put(format!("k{i:03}"), format!("v{i}"), None).await.expect("put");
    }
    c.compact(100, None).await.expect("compact");
    let before = c.get("k", Some(GetOptions::new().with_prefix())).await.expect("range");
    assert!(member.stop(), "SIGTERM must stop ferrocd cleanly (exit 0)");
    member.restart().await;
    let mut c = member.client().await;
    let after = c.get("k", Some(GetOptions::new().with_prefix())).await.expect("range");
    let flat = |r: &etcd_client::GetResponse| -> Vec<String> {
        r.kvs()
            .iter()
            .map(|kv| format!("{:?}", (kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.version())))
            .collect()
    };
    assert_eq!(flat(&after), flat(&before));
    assert_eq!(after.kvs().len(), 200);
    assert_eq!(after.header().expect("h").revision(), before.header().expect("h").revision());
    // The compaction survived too.
    let err = c.get("k000", Some(GetOptions::new().with_revision(50))).await.expect_err("compacted");
    assert!(err.to_string().contains("required revision has been compacted"), "{err}");
    let put = c.put("k000", "again", Some(PutOptions::new().with_prev_key())).await.expect("put");
    assert_eq!(put.prev_key().expect("prev").value(), b"v0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_after_snapshot_and_wal_purge() {
    // 1,200 writes of 64 KiB overflow the first 64 MiB WAL segment; with a
    // snapshot every 200 entries, the covered segment is purged.
    let mut member = Member::ferrocd(&["--snapshot-count", "200"]).await;
    let value = vec![b'x'; 64 * 1024];
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (endpoint, value) = (member.endpoint(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = etcd_client::Client::connect([endpoint], None).await.expect("connect");
            for i in 0..150 {
                c.put(format!("big/{w}/{i:03}"), value.clone(), None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let wal_dir = member.data_dir().join("member/wal");
    let segments = || std::fs::read_dir(&wal_dir).expect("wal dir").count();
    // Purging happens at the next snapshot after the roll-over.
    let mut c = member.client().await;
    for i in 0..250 {
        c.put(format!("small/{i:03}"), "v", None).await.expect("put");
    }
    assert_eq!(segments(), 1, "the segment covered by a snapshot should be purged");
    let rev = c.get("small/249", None).await.expect("get").header().expect("header").revision();
    member.kill();
    member.restart().await;
    let mut c = member.client().await;
    let big = c.get("big/", Some(GetOptions::new().with_prefix().with_keys_only())).await.expect("range");
    assert_eq!(big.count(), 1200);
    let small = c.get("small/", Some(GetOptions::new().with_prefix())).await.expect("range");
    assert_eq!(small.count(), 250);
    assert_eq!(small.header().expect("header").revision(), rev);
    let one = c.get("big/7/149", None).await.expect("get");
    assert_eq!(one.kvs()[0].value().len(), 64 * 1024);
}

/// A defragmentation moves the history into the base; writes after it land
/// in sled beside it. kill -9 at random moments after it, and between more
/// defragmentations, loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_after_defragmenting_loses_no_acknowledged_write() {
    let mut member = Member::ferrocd(&["--snapshot-count", "300"]).await;
    let acked: Acked = Arc::default();
    for round in 0..3 {
        write_until_killed(&mut member, round, &acked).await;
        member.restart().await;
        verify(&member, &acked).await;
        let mut c = member.client().await;
        let rev = c.get("r", None).await.expect("get").header().expect("header").revision();
        // Compact first, as operators do (every key here is written once,
        // so every value stays readable at its revision).
        c.compact(rev, None).await.expect("compact");
        c.defragment().await.expect("defragment");
        verify(&member, &acked).await;
    }
    let base = member.data_dir().join("member/db/base");
    assert!(base.is_file(), "the defragmentation wrote no base");
}
