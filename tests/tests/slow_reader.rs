//! A client that opens many streams and never reads cannot make a member
//! hold unbounded memory (each connection has a budget of unread response
//! bytes, `--max-unread-response-bytes`), and other clients go on as usual.

use std::time::{Duration, Instant};

use ferrocd::proto::etcdserverpb::RangeRequest;
use ferrocd_tests::member::Member;
use prost::Message;
use tokio::net::TcpStream;

const VALUE: usize = 1024 * 1024;
const HOGS: u64 = 4;
/// `--max-unread-response-bytes`, each connection's budget.
const BUDGET: u64 = 64 << 20;

/// What the hog's streams ended with, once answered: the gRPC status of a
/// trailers-only response (an error), or 0 for a response with data.
type Outcomes = std::sync::Arc<std::sync::Mutex<Vec<u32>>>;

/// Opens one HTTP/2 connection with a 64 KiB window and sends `streams`
/// Range requests for `key` on it, never reading a response body.
async fn hog(addr: &str, streams: usize, key: &str, outcomes: Outcomes) -> tokio::task::JoinHandle<()> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let mut tasks = vec![tokio::spawn(async move {
        let _ = conn.await;
    })];
    let mut body = vec![0u8];
    let msg = RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() }.encode_to_vec();
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let body = bytes::Bytes::from(body);
    for _ in 0..streams {
        let (client, body, uri, outcomes) =
            (client.clone(), body.clone(), format!("http://{addr}/etcdserverpb.KV/Range"), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = client.ready().await else { return };
            let req = http::Request::post(uri)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let Ok((resp, mut send)) = client.send_request(req, false) else { return };
            if send.send_data(body, true).is_err() {
                return;
            }
            let Ok(resp) = resp.await else { return };
            let status = resp.headers().get("grpc-status").and_then(|s| s.to_str().ok()?.parse().ok()).unwrap_or(0);
            outcomes.lock().expect("lock").push(status);
            // Hold the unread body until the test ends.
            let _body = resp.into_body();
            std::future::pending::<()>().await;
        }));
    }
    tokio::spawn(async move {
        // Aborted (connection dropped) when the test drops this handle's task.
        let _guard = AbortOnDrop(tasks);
        std::future::pending::<()>().await;
    })
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(|t| t.abort());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_never_read_pin_a_bounded_amount_of_memory() {
    // A short election timeout makes the request timeout (after which a
    // waiting read fails) 5.2 s.
    let budget = BUDGET.to_string();
    let member = Member::ferrocd(&[
        "--heartbeat-interval",
        "10",
        "--election-timeout",
        "100",
        "--max-unread-response-bytes",
        &budget,
    ])
    .await;
    let mut c = member.client().await;
    c.put("big", vec![b'v'; VALUE], None).await.expect("put 1 MB");
    let before = member.rss_bytes();
    let addr = member.endpoint().trim_start_matches("http://").to_string();
    let outcomes: Outcomes = Default::default();
    let mut hogs = Vec::new();
    for _ in 0..HOGS {
        hogs.push(hog(&addr, 2000, "big", outcomes.clone()).await);
    }
    // Other clients meanwhile: small writes and reads keep working.
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut peak = before;
    while start.elapsed() < Duration::from_secs(7) {
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), c.put("small", "x", None))
            .await
            .expect("a put timed out while hogs held the member")
            .expect("put");
        let got = tokio::time::timeout(Duration::from_secs(5), c.get("small", None)).await.expect("get timed out");
        assert_eq!(got.expect("get").kvs()[0].value(), b"x");
        slowest = slowest.max(t.elapsed());
        peak = peak.max(member.rss_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes = outcomes.lock().expect("lock").clone();
    let served = outcomes.iter().filter(|s| **s == 0).count();
    let refused = outcomes.iter().filter(|s| **s == 8).count();
    eprintln!(
        "RSS {} MB before, peak {} MB with 4 x 2000 unread 1 MB ranges; {served} answered, {refused} refused; \
         slowest put+get of another client {slowest:?}",
        before >> 20,
        peak >> 20
    );
    // Each connection's budget, plus the streams' own state (without the
    // budget: 5 GB).
    assert!(peak < before + HOGS * BUDGET + (192 << 20), "RSS grew from {} MB to {} MB", before >> 20, peak >> 20);
    assert!(served > 0, "the hogs got no answers at all");
    assert!(refused > 0, "reads waiting past the request timeout were not refused: {outcomes:?}");
    assert_eq!(outcomes.len(), served + refused, "other outcomes: {outcomes:?}");
    drop(hogs);
}
