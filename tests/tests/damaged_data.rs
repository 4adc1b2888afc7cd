//! Damaged data never costs an acknowledged write quietly. WAL: crash
//! images made under concurrent writes and `kill -9`, damaged at many
//! offsets, either start with every acknowledged write or are refused with
//! an error that names the file, the offset and the way out; only a torn
//! tail is cut. Backend: damage is refused as such (never a panic, never a
//! wrong value served), and `ferrocdutl check` names what is damaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use ferrocd_tests::member::Member;

/// Acknowledged puts: key -> revision.
type Acked = Arc<Mutex<BTreeMap<String, i64>>>;

const WRITERS: usize = 16;
const VALUE: usize = 16 * 1024;
/// No snapshot (and so no WAL purge) while the image is made: the damage
/// cases want an earlier segment.
const FLAGS: &[&str] = &["--snapshot-count", "1000000"];

fn value_of(key: &str) -> String {
    let mut v = format!("{key}/");
    while v.len() < VALUE {
        v.push_str(key);
    }
    v.truncate(VALUE);
    v
}

/// Puts from 16 writers until the WAL has rolled into a second segment and
/// grown in it, then `kill -9`.
async fn crash_image() -> (Member, BTreeMap<String, i64>) {
    let mut member = Member::ferrocd(FLAGS).await;
    let acked: Acked = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (endpoint, acked) = (member.endpoint(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = etcd_client::Client::connect([endpoint], None).await else {
                return;
            };
            for seq in 0.. {
                let key = format!("w{w:02}/{seq:06}");
                let put = c.put(key.clone(), value_of(&key), None);
                match tokio::time::timeout(Duration::from_secs(5), put).await {
                    Ok(Ok(resp)) => {
                        acked.lock().expect("lock").insert(key, resp.header().expect("header").revision());
                    }
                    _ => return,
                }
            }
        }));
    }
    let wal = member.data_dir().join("member/wal");
    let deadline = Instant::now() + Duration::from_secs(240);
    while segments(&wal).len() < 2 || segment_data_end(segments(&wal).last().expect("segment")) < 4 << 20 {
        assert!(Instant::now() < deadline, "the WAL did not roll a segment in time:\n{}", member.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    member.kill();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();
    (member, acked)
}

fn segments(wal: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> =
        std::fs::read_dir(wal).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    s.retain(|p| p.extension().is_some_and(|e| e == "wal"));
    s.sort();
    s
}

/// Each record of a segment as (start, end), up to the zero fill (the
/// format: an 8-byte magic, then records of `len u32 LE | crc u32 | header
/// crc u32 | body of len bytes`).
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    const HEADER: usize = 12;
    let mut spans = Vec::new();
    let mut at = 8;
    while at + HEADER < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || at + HEADER + len > bytes.len() {
            break;
        }
        spans.push((at, at + HEADER + len));
        at += HEADER + len;
    }
    spans
}

fn segment_data_end(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Every acknowledged put is there, at the revision it was acknowledged with
/// (values checked for a sample).
async fn assert_all_acked(member: &Member, acked: &BTreeMap<String, i64>, case: &str) {
    let mut c = member.client().await;
    let all = c.get("w", Some(GetOptions::new().with_prefix().with_keys_only())).await.expect("range");
    let found: BTreeMap<&[u8], i64> = all.kvs().iter().map(|kv| (kv.key(), kv.mod_revision())).collect();
    for (key, rev) in acked {
        assert_eq!(found.get(key.as_bytes()), Some(rev), "{case}: acknowledged put {key} (rev {rev}) lost");
    }
    for key in acked.keys().step_by(acked.len() / 10 + 1) {
        let got = c.get(key.as_str(), None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), value_of(key).as_bytes(), "{case}: value of {key}");
    }
}

struct Damage {
    name: &'static str,
    segment: usize,
    offset: usize,
    /// Must be refused (damage to records); otherwise either outcome is
    /// allowed as long as nothing acknowledged is lost.
    refused: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_crash_images_start_whole_or_are_refused() {
    let (member, acked) = crash_image().await;
    assert!(acked.len() > 3000, "too few writes to fill two segments: {}", acked.len());
    let image = member.data_dir();
    let segs = segments(&image.join("member/wal"));
    let last = segs.len() - 1;
    let spans: Vec<Vec<(usize, usize)>> =
        segs.iter().map(|p| records(&std::fs::read(p).expect("read segment"))).collect();
    let records: Vec<Vec<usize>> = spans.iter().map(|s| s.iter().map(|r| r.0).collect()).collect();
    let data_end = spans[last].last().expect("records").1;
    // 8 bytes in the middle of a record (hard state records are 37 bytes).
    let inside = |(start, end): (usize, usize)| start + (end - start - 8) / 2;
    let mid = |s: usize| inside(spans[s][spans[s].len() / 2]);
    let last_of = |s: usize| inside(*spans[s].last().expect("records"));
    let damages = [
        Damage { name: "first record of the first segment", segment: 0, offset: records[0][0], refused: true },
        Damage { name: "middle of the first segment", segment: 0, offset: mid(0), refused: true },
        Damage { name: "last record of the first segment", segment: 0, offset: last_of(0), refused: true },
        Damage { name: "first record of the last segment", segment: last, offset: records[last][0] + 4, refused: true },
        Damage { name: "a record header in the last segment", segment: last, offset: records[last][1], refused: true },
        Damage { name: "middle of the last segment", segment: last, offset: mid(last), refused: true },
        Damage { name: "last record of the last segment", segment: last, offset: last_of(last), refused: true },
        Damage { name: "last record's length", segment: last, offset: *records[last].last().unwrap(), refused: true },
        Damage { name: "zero fill right after the records", segment: last, offset: data_end + 2, refused: false },
        Damage { name: "zero fill further on", segment: last, offset: data_end + 3000, refused: false },
    ];
    for d in &damages {
        let path = segs[d.segment].strip_prefix(&image).expect("in image").to_path_buf();
        let result = Member::try_ferrocd_on(
            |data| {
                copy_dir(&image, data);
                let mut bytes = std::fs::read(data.join(&path)).expect("read");
                for b in &mut bytes[d.offset..d.offset + 8] {
                    *b ^= 0xff;
                }
                std::fs::write(data.join(&path), &bytes).expect("write");
            },
            FLAGS,
        )
        .await;
        match result {
            Ok(m) => {
                assert!(!d.refused, "{}: started on a damaged WAL:\n{}", d.name, m.log_tail());
                assert_all_acked(&m, &acked, d.name).await;
                eprintln!("{}: started with every acknowledged put", d.name);
            }
            Err(log) => {
                let name = path.file_name().expect("name").to_string_lossy().to_string();
                assert!(
                    log.contains("is corrupt at offset") && log.contains(&name) && log.contains("snapshot restore"),
                    "{}: refused without naming the file, offset and way out:\n{log}",
                    d.name
                );
                eprintln!("{}: refused", d.name);
            }
        }
    }

    // A torn tail (a new record cut short by the file's end) is repaired, and
    // the cut bytes are kept in a `.broken` file.
    let tail = segs[last].strip_prefix(&image).expect("in image").to_path_buf();
    let torn = Member::try_ferrocd_on(
        |data| {
            copy_dir(&image, data);
            let mut bytes = std::fs::read(data.join(&tail)).expect("read");
            let (start, end) = *spans[last].last().expect("records");
            let record = bytes[start..end].to_vec();
            bytes.truncate(end);
            bytes.extend_from_slice(&record[..record.len() / 2]);
            std::fs::write(data.join(&tail), &bytes).expect("write");
        },
        FLAGS,
    )
    .await
    .unwrap_or_else(|log| panic!("a torn tail was not repaired:\n{log}"));
    assert_all_acked(&torn, &acked, "torn tail").await;
    let broken = std::fs::read_dir(torn.data_dir().join("member/wal"))
        .expect("wal dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".broken"))
        .count();
    assert_eq!(broken, 1, "the cut bytes are kept beside the segment");
}

/// A log cut below what the backend applied (here after a clean stop) is
/// refused, however the cut looks: serving from it would reuse applied indexes.
#[tokio::test]
async fn a_wal_behind_the_backend_is_refused() {
    let mut member = Member::ferrocd(FLAGS).await;
    let mut c = member.client().await;
    for i in 0..50 {
        c.put(format!("k{i}"), "v", None).await.expect("put");
    }
    assert!(member.stop(), "clean stop");
    let segs = segments(&member.data_dir().join("member/wal"));
    let tail = segs.last().expect("segment");
    let bytes = std::fs::read(tail).expect("read");
    let spans = records(&bytes);
    let (start, end) = spans[spans.len() - 10];
    std::fs::write(tail, &bytes[..(start + end) / 2]).expect("cut the tail");
    for attempt in 0..2 {
        let log = member.try_restart().await.expect_err("started with a log behind its backend");
        assert!(
            log.contains("ends at index")
                && log.contains("the backend has applied up to")
                && log.contains("snapshot restore"),
            "attempt {attempt}: unclear refusal:\n{log}"
        );
    }
}

fn ferrocdutl_check(data: &Path) -> (bool, String) {
    let util = ferrocd_tests::tools::ferrocd_bin().with_file_name("ferrocdutl");
    let out = std::process::Command::new(util)
        .arg("check")
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run ferrocdutl check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn hash_kv(member: &Member) -> u32 {
    member.client().await.hash_kv(0).await.expect("hashkv").hash()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_backend_is_refused_as_damaged_and_check_names_it() {
    let mut member = Member::ferrocd(&["--snapshot-count", "1000"]).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = member.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..400 {
                let key = format!("k{w}/{:03}", i % 150);
                c.put(key.clone(), value_of(&key)[..1024].to_string(), None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let hash = hash_kv(&member).await;
    assert!(member.stop(), "clean stop");
    let image = member.data_dir();
    let (ok, text) = ferrocdutl_check(&image);
    assert!(ok && text.contains("wal: ok") && text.contains("backend") && !text.contains("DAMAGED"), "{text}");

    let db = image.join("member/db/db");
    let len = std::fs::metadata(&db).expect("db file").len() as usize;
    let mut refused = 0;
    for at in (0..len - 8).step_by(len / 6).skip(1) {
        let damage = |data: &Path| {
            copy_dir(&image, data);
            let file = data.join("member/db/db");
            let mut bytes = std::fs::read(&file).expect("read");
            bytes[at..at + 8].iter_mut().for_each(|b| *b ^= 0xff);
            std::fs::write(&file, &bytes).expect("write");
        };
        match Member::try_ferrocd_on(damage, &[]).await {
            // Started: whatever sled kept, the WAL's replay made it whole.
            Ok(m) => assert_eq!(hash_kv(&m).await, hash, "damage at {at}: started with other data"),
            Err(log) => {
                assert!(
                    log.contains("the backend") && log.contains("is damaged") && log.contains("snapshot restore"),
                    "damage at {at}: unclear refusal:\n{log}"
                );
                assert!(!log.contains("stopped with an error error=\"background task failed"), "{log}");
                refused += 1;
                let copy = tempfile::tempdir().expect("dir");
                damage(copy.path());
                let (ok, text) = ferrocdutl_check(copy.path());
                assert!(!ok && text.contains("member/db: DAMAGED"), "check missed the damage at {at}:\n{text}");
            }
        }
    }
    assert!(refused > 0, "no damage was refused: the test lost its point");

    // A damaged WAL: check says which segment and where.
    let copy = tempfile::tempdir().expect("dir");
    copy_dir(&image, copy.path());
    let seg = segments(&copy.path().join("member/wal")).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = records(&bytes)[3].0 + 20;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).expect("write");
    let (ok, text) = ferrocdutl_check(copy.path());
    assert!(!ok && text.contains("wal: DAMAGED") && text.contains("is corrupt at offset"), "{text}");
}
