//! Maintenance.Snapshot: a consistent image taken while writes go on,
//! streamed with etcd's framing (SHA-256 trailer, size 32 past a multiple of
//! 512), saved by `etcdctl snapshot save` 3.4 and 3.5.1.

use std::time::Duration;

use ferrocd::mvcc::SnapshotImage;
use ferrocd_tests::etcdctl::run;
use ferrocd_tests::member::Member;
use ferrocd_tests::tools::require_tool;

/// Every put makes one revision: an image at revision `r` must hold each of
/// 2..=r exactly once, and nothing newer.
fn assert_consistent(image: &SnapshotImage) -> i64 {
    let revision = image.revision().expect("applied record");
    let mains: Vec<i64> = image.revisions().iter().map(|r| r.main).collect();
    assert_eq!(mains, (2..=revision).collect::<Vec<_>>(), "image at revision {revision}");
    revision
}

#[tokio::test]
async fn snapshot_is_consistent_while_writes_go_on() {
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    for i in 0..2000 {
        c.put(format!("s/{i:05}"), vec![b'x'; 200], None).await.unwrap();
    }
    let mut writer = member.client().await;
    let writes = tokio::spawn(async move {
        for i in 0..3000 {
            writer.put(format!("w/{i:05}"), "v", None).await.unwrap();
        }
    });
    let mut images = Vec::new();
    for _ in 0..3 {
        let mut stream = c.snapshot().await.unwrap();
        let mut data = Vec::new();
        let mut remaining = None;
        while let Some(piece) = stream.message().await.unwrap() {
            assert!(!piece.blob().is_empty() && piece.blob().len() <= 32 * 1024);
            if let Some(before) = remaining {
                assert_eq!(piece.remaining_bytes(), before - piece.blob().len() as u64);
            }
            remaining = Some(piece.remaining_bytes());
            data.extend_from_slice(piece.blob());
        }
        assert_eq!(remaining, Some(0));
        assert_eq!(data.len() % 512, 32);
        images.push(assert_consistent(&SnapshotImage::parse(&data).expect("a valid image")));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writes.await.unwrap();
    assert!(images[0] >= 2001, "{images:?}");
    assert!(images.windows(2).all(|w| w[0] <= w[1]), "{images:?}");
}

/// `etcdctl snapshot save` checks the size rule and writes the stream out;
/// the saved file is ferrocd's image (etcdutl cannot read it: not bbolt).
async fn save_with(etcdctl: &std::path::Path) {
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    for i in 0..100 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap.db");
    let ep = member.endpoint().trim_start_matches("http://").to_string();
    let out = run(etcdctl, &ep, &["snapshot", "save", path.to_str().unwrap()], None);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Snapshot saved at"), "{}", out.stdout);
    let data = std::fs::read(&path).unwrap();
    assert_eq!(assert_consistent(&SnapshotImage::parse(&data).unwrap()), 101);
}

#[tokio::test]
async fn etcdctl_3_4_snapshot_save() {
    let Some(etcdctl) = require_tool("etcdctl-3.4") else { return };
    save_with(&etcdctl).await;
}

#[tokio::test]
async fn etcdctl_3_5_snapshot_save() {
    let Some(etcdctl) = require_tool("etcdctl-3.5") else { return };
    save_with(&etcdctl).await;
}

/// A snapshot restored with `ferrocdutl` into a new data dir starts as a new
/// member holding the same keys, leases and users, at the same revision.
#[tokio::test]
async fn restore_into_a_new_member() {
    let source = Member::ferrocd(&["--bcrypt-cost", "4"]).await;
    let mut c = source.client().await;
    for i in 0..50 {
        c.put(format!("r/{i:02}"), format!("v{i}"), None).await.unwrap();
    }
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("r/leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease))).await.unwrap();
    c.user_add("carol", "pw", None).await.unwrap();
    c.delete("r/00", None).await.unwrap();
    let revision = c.get("r/", None).await.unwrap().header().unwrap().revision();
    let hash = c.hash().await.unwrap().hash();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let mut stream = c.snapshot().await.unwrap();
    let mut data = Vec::new();
    while let Some(piece) = stream.message().await.unwrap() {
        data.extend_from_slice(piece.blob());
    }
    std::fs::write(&file, &data).unwrap();

    let util = ferrocd_tests::tools::ferrocd_bin().with_file_name("ferrocdutl");
    let status =
        std::process::Command::new(&util).args(["snapshot", "status", "-w", "json"]).arg(&file).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["revision"], revision);
    assert_eq!(status["hash"], hash, "the image is the backend as Hash saw it");
    assert_eq!(status["totalSize"], data.len());

    let restore = |data_dir: &std::path::Path| {
        std::process::Command::new(&util)
            .args(["snapshot", "restore"])
            .arg(&file)
            .arg("--data-dir")
            .arg(data_dir)
            .output()
            .unwrap()
    };
    let run_restore = |data_dir: &std::path::Path| {
        let out = restore(data_dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!restore(data_dir).status.success(), "restoring over an existing data dir is refused");
    };
    let mut restored = Member::ferrocd_on(run_restore, &[]).await;
    let mut r = restored.client().await;
    let got = r.get("r/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(got.count(), 50, "49 keys and the leased one");
    assert_eq!(got.header().unwrap().revision(), revision);
    assert_eq!(got.kvs()[0].value(), b"v1");
    assert!(r.lease_time_to_live(lease, None).await.unwrap().ttl() > 500);
    assert_eq!(r.user_list().await.unwrap().users(), ["carol"]);
    assert_eq!(r.put("r/new", "n", None).await.unwrap().header().unwrap().revision(), revision + 1);
    restored.restart().await;
    let mut r = restored.client().await;
    assert_eq!(r.get("r/new", None).await.unwrap().kvs()[0].value(), b"n");
}
