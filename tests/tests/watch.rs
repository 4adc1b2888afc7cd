//! Watch through a client this project did not write (the `etcd-client`
//! crate): ranges and filters, history from a revision with previous values,
//! client-chosen IDs, cancel, progress requests and notifications,
//! compaction, fragments, slow watchers, many watchers, and resuming across a
//! restart. Every event must arrive once, in order.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
use ferrocd_tests::member::Member;

const WAIT: Duration = Duration::from_secs(20);

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no watch response in time")
        .expect("watch stream failed")
        .expect("watch stream ended")
}

async fn created(stream: &mut WatchStream) -> i64 {
    let r = next(stream).await;
    assert!(r.created() && !r.canceled(), "expected a created response, got {r:?}");
    r.watch_id()
}

/// (type, key, value, mod revision, previous value) of each event.
type Seen = (EventType, String, String, i64, Option<String>);

fn seen(r: &WatchResponse) -> Vec<Seen> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (e.event_type(), text(kv.key()), text(kv.value()), kv.mod_revision(), e.prev_kv().map(|p| text(p.value())))
        })
        .collect()
}

/// Collects events of `id` until `n` have arrived.
async fn events(stream: &mut WatchStream, id: i64, n: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(stream).await;
        assert_eq!(r.watch_id(), id, "unexpected response {r:?}");
        assert!(!r.canceled(), "watch canceled: {r:?}");
        out.extend(seen(&r));
    }
    assert_eq!(out.len(), n, "more events than written");
    out
}

#[tokio::test]
async fn ranges_filters_history_prev_kv_ids_cancel_and_compaction() {
    let member = Member::ferrocd(&[]).await;
    let mut c: Client = member.client().await;
    c.put("a", "1", None).await.unwrap(); // rev 2
    c.put("a", "2", None).await.unwrap(); // rev 3
    c.put("ab", "x", None).await.unwrap(); // rev 4
    c.delete("a", None).await.unwrap(); // rev 5
    c.put("b", "y", None).await.unwrap(); // rev 6

    // History from revision 1, prefix, with previous values.
    let mut s =
        c.watch("a", Some(WatchOptions::new().with_prefix().with_start_revision(1).with_prev_key())).await.unwrap();
    let id = created(&mut s).await;
    let got = events(&mut s, id, 4).await;
    use EventType::{Delete, Put};
    assert_eq!(
        got,
        vec![
            (Put, "a".into(), "1".into(), 2, None),
            (Put, "a".into(), "2".into(), 3, Some("1".into())),
            (Put, "ab".into(), "x".into(), 4, None),
            (Delete, "a".into(), "".into(), 5, Some("2".into())),
        ]
    );

    // Live events on the same stream, then more watchers on it: a filter,
    // a client-chosen ID, a duplicate ID, an empty range.
    c.put("ac", "z", None).await.unwrap(); // rev 7
    assert_eq!(events(&mut s, id, 1).await, vec![(Put, "ac".into(), "z".into(), 7, None)]);
    s.watch("a", Some(WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut]).with_watch_id(100)))
        .await
        .unwrap();
    assert_eq!(created(&mut s).await, 100);
    s.watch("x", Some(WatchOptions::new().with_watch_id(100))).await.unwrap();
    let dup = next(&mut s).await;
    assert!(dup.created() && dup.canceled() && dup.watch_id() == -1, "{dup:?}");
    assert_eq!(dup.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
    s.watch("b", Some(WatchOptions::new().with_range("a"))).await.unwrap();
    let empty = next(&mut s).await;
    assert!(empty.canceled() && empty.watch_id() == -1);
    assert_eq!(empty.cancel_reason(), "mvcc: watcher range is empty");

    c.delete("ab", None).await.unwrap(); // rev 8: both watchers
    let mut by_id = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let r = next(&mut s).await;
        assert_eq!(r.header().unwrap().revision(), 8);
        by_id.insert(r.watch_id(), seen(&r));
    }
    let del = vec![(Delete, "ab".to_string(), String::new(), 8, Some("x".to_string()))];
    assert_eq!(by_id[&id], del);
    assert_eq!(by_id[&100], vec![(Delete, "ab".to_string(), String::new(), 8, None)]);

    // Cancel: a canceled response, then nothing more for that watcher.
    s.cancel(id).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.canceled() && r.watch_id() == id && !r.created());
    c.put("ad", "w", None).await.unwrap(); // rev 9: watcher 100 filters puts
    c.delete("ad", None).await.unwrap(); // rev 10
    assert_eq!(events(&mut s, 100, 1).await, vec![(Delete, "ad".to_string(), String::new(), 10, None)]);

    // A start below the compaction: canceled with the compaction revision.
    c.compact(9, None).await.unwrap();
    let mut old = c.watch("a", Some(WatchOptions::new().with_start_revision(3))).await.unwrap();
    created(&mut old).await;
    let r = next(&mut old).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), 9);
    // At the compaction revision itself, history is complete.
    let mut at = c.watch("a", Some(WatchOptions::new().with_prefix().with_start_revision(9))).await.unwrap();
    let at_id = created(&mut at).await;
    assert_eq!(
        events(&mut at, at_id, 2).await,
        vec![(Put, "ad".into(), "w".into(), 9, None), (Delete, "ad".into(), "".into(), 10, None)]
    );

    // A future start revision: nothing until the store gets there.
    let mut future = c.watch("f", Some(WatchOptions::new().with_start_revision(13))).await.unwrap();
    let fid = created(&mut future).await;
    c.put("f", "11", None).await.unwrap();
    c.put("f", "12", None).await.unwrap();
    c.put("f", "13", None).await.unwrap();
    assert_eq!(events(&mut future, fid, 1).await, vec![(Put, "f".into(), "13".into(), 13, None)]);
}

#[tokio::test]
async fn progress_requests_and_notifications() {
    let member = Member::ferrocd(&["--watch-progress-notify-interval", "1s"]).await;
    let mut c = member.client().await;
    let rev = c.put("p", "1", None).await.unwrap().header().unwrap().revision();
    let mut s = c.watch("q", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    let id = created(&mut s).await;

    // A progress request: watch ID -1, at the current revision.
    s.request_progress().await.unwrap();
    let r = next(&mut s).await;
    assert_eq!((r.watch_id(), r.events().len(), r.header().unwrap().revision()), (-1, 0, rev));

    // Asked-for progress notifications arrive on the interval, for the watcher.
    let r = next(&mut s).await;
    assert_eq!((r.watch_id(), r.events().len()), (id, 0));
    assert_eq!(r.header().unwrap().revision(), rev);

    // A stream whose watcher is catching up answers once it has caught up:
    // after every event at or below the revision it reports.
    for i in 0..50 {
        c.put("h", format!("{i}"), None).await.unwrap();
    }
    let mut h = c.watch("h", Some(WatchOptions::new().with_start_revision(1))).await.unwrap();
    h.request_progress().await.unwrap();
    let hid = created(&mut h).await;
    let mut n = 0;
    loop {
        let r = next(&mut h).await;
        if r.watch_id() == -1 {
            assert_eq!(r.header().unwrap().revision(), rev + 50);
            break;
        }
        assert_eq!(r.watch_id(), hid);
        n += r.events().len();
    }
    assert_eq!(n, 50, "the progress response came before the history");
}

/// How a watch's catch-up of 5 puts of 900 KiB comes in with fragments
/// allowed: the events of each response. (etcd splits at the gRPC receive
/// limit, `--max-request-bytes` + 512 KiB: 2 MiB by default.)
async fn fragment_sizes(member: &Member) -> Vec<usize> {
    let mut c = member.client().await;
    let mut rev = 0;
    for i in 0..5 {
        let r = c.put(format!("big/{i}"), vec![b'v'; 900 * 1024], None).await.unwrap();
        if rev == 0 {
            rev = r.header().unwrap().revision();
        }
    }
    let mut s = c
        .watch("big/", Some(WatchOptions::new().with_prefix().with_start_revision(rev).with_fragment()))
        .await
        .unwrap();
    let id = created(&mut s).await;
    // etcd-client passes fragments through (it has no accessor for the
    // flag); the events must still come once each, in order.
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    while keys.len() < 5 {
        let r = next(&mut s).await;
        assert_eq!(r.watch_id(), id);
        sizes.push(r.events().len());
        keys.extend(r.events().iter().map(|e| e.kv().unwrap().key_str().unwrap().to_string()));
    }
    assert_eq!(keys, (0..5).map(|i| format!("big/{i}")).collect::<Vec<_>>());
    sizes
}

#[tokio::test]
async fn fragments_split_large_responses_as_etcd() {
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&[]).await else { return };
    let want = fragment_sizes(&etcd).await;
    let got = fragment_sizes(&ferrocd).await;
    assert_eq!(got, want, "ferrocd (left) splits differently from etcd (right)");
    assert!(got.len() >= 2, "a 4.5 MiB response over a 2 MiB limit must be fragmented: {got:?}");
}

/// etcd's gauge of watchers catching up from the store.
async fn slow_watchers(addr: &str) -> i64 {
    let (code, body) = ferrocd_tests::http::http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_slow_watcher_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("etcd_debugging_mvcc_slow_watcher_total in /metrics")
}

#[tokio::test]
async fn slow_watchers_and_many_watchers_get_every_event_once_in_order() {
    let member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;

    // A watcher that does not read while 3,000 2-KiB writes happen (more
    // than HTTP/2 windows and the server's queues hold): it falls behind and
    // must catch up from the store.
    let mut slow = c.watch("s", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let slow_id = created(&mut slow).await;
    // 100 streams x 100 watchers = 10,000 watchers on 10 keys.
    let keys: Vec<String> = (0..10).map(|k| format!("m/{k}")).collect();
    let mut streams = Vec::new();
    for _ in 0..100 {
        let mut s = c.watch(keys[0].clone(), None).await.unwrap();
        created(&mut s).await;
        for w in 1..100 {
            s.watch(keys[w % 10].clone(), None).await.unwrap();
            created(&mut s).await;
        }
        streams.push(s);
    }
    const WRITES: usize = 3000;
    // Every 10th write also goes to one of the 10 keys: each stream's 10
    // watchers of that key get it.
    const PER_STREAM: usize = WRITES / 10 * 10;
    let writer = {
        let mut c = c.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                c.put(format!("s/{i:05}"), vec![b'x'; 2048], None).await.unwrap();
                if i % 10 == 0 {
                    c.put(keys[i / 10 % 10].clone(), format!("{i}"), None).await.unwrap();
                }
            }
        })
    };
    // The many watchers read as the writes go.
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                // Each watcher sees every write to its key, in order.
                let mut last: std::collections::HashMap<i64, i64> = Default::default();
                let mut count = 0;
                while count < PER_STREAM {
                    let r = next(&mut s).await;
                    for e in r.events() {
                        let rev = e.kv().unwrap().mod_revision();
                        let prev = last.insert(r.watch_id(), rev).unwrap_or(0);
                        assert!(rev > prev, "watcher {} got revision {rev} after {prev}", r.watch_id());
                        count += 1;
                    }
                }
                count
            })
        })
        .collect();
    writer.await.unwrap();
    for r in readers {
        assert_eq!(r.await.unwrap(), PER_STREAM);
    }
    // It did fall behind: the hub dropped it to catch up from the store.
    let addr = member.endpoint().trim_start_matches("http://").to_string();
    assert!(slow_watchers(&addr).await >= 1, "the watcher that did not read is not counted as slow");
    let got = events(&mut slow, slow_id, WRITES).await;
    let keys: Vec<String> = got.iter().map(|e| e.1.clone()).collect();
    let want: Vec<String> = (0..WRITES).map(|i| format!("s/{i:05}")).collect();
    assert_eq!(keys, want, "the slow watcher must get every event once, in order");
    assert!(got.windows(2).all(|w| w[0].3 < w[1].3));
    // Caught up, it is fed by the hub again.
    let mut synced = false;
    for _ in 0..50 {
        if slow_watchers(&addr).await == 0 {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(synced, "the caught-up watcher stays slow");
    // Memory stays bounded: nothing keeps all events per watcher.
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", member.pid().expect("running")))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap()))
        .unwrap();
    assert!(rss_kib < 512 * 1024, "ferrocd uses {rss_kib} KiB with 10,000 watchers");
}

#[tokio::test]
async fn watchers_resume_after_a_restart_without_gaps() {
    let mut member = Member::ferrocd(&[]).await;
    let mut c = member.client().await;
    let mut s = c.watch("r/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let id = created(&mut s).await;
    for i in 0..20 {
        c.put(format!("r/{i}"), "v", None).await.unwrap();
    }
    let first = events(&mut s, id, 20).await;
    let last_rev = first.last().unwrap().3;
    drop(s);
    member.restart().await;
    let mut c = member.client().await;
    for i in 20..40 {
        c.put(format!("r/{i}"), "v", None).await.unwrap();
    }
    // The client resumes from the last revision it saw, plus one.
    let mut s = c.watch("r/", Some(WatchOptions::new().with_prefix().with_start_revision(last_rev + 1))).await.unwrap();
    let id = created(&mut s).await;
    let rest = events(&mut s, id, 20).await;
    let revs: Vec<i64> = first.iter().chain(&rest).map(|e| e.3).collect();
    assert_eq!(revs, (revs[0]..revs[0] + 40).collect::<Vec<_>>(), "a gap or a repeat across the restart");
}
