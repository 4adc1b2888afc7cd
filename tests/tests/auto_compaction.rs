//! `--auto-compaction-mode periodic` with a short retention compacts the
//! history older than the retention on its own. (The schedules themselves,
//! including revision mode's 5-minute checks, are unit tests of `compactor`.)

use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use ferrocd_tests::member::Member;
use tonic::Code;

#[tokio::test]
async fn periodic_auto_compaction_drops_old_history() {
    let member = Member::ferrocd(&["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"]).await;
    let mut c = member.client().await;
    let first = c.put("k", "0", None).await.unwrap().header().unwrap().revision();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        i += 1;
        c.put("k", format!("{i}"), None).await.unwrap();
        match c.get("k", Some(GetOptions::new().with_revision(first))).await {
            Ok(_) => {}
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == Code::OutOfRange => {
                assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(Instant::now() < deadline, "nothing was compacted with a 2 s retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only old history went: the latest value is still there.
    let now = c.get("k", None).await.unwrap();
    assert_eq!(now.kvs()[0].value(), format!("{i}").as_bytes());
    let log = member.log_tail();
    assert!(log.contains("starting auto compaction"), "{log}");
}
