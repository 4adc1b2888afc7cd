//! Clients that keep writing and reading through a whole cluster while a
//! test breaks it: each writes keys of its own (to check afterwards that no
//! acknowledged write is lost) and reads and writes a few shared keys (to
//! check the history is linearizable), noting when a revision it was shown
//! went backwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio::task::JoinHandle;

use crate::linearizability::{Event, History, Op};

/// Shared keys the clients read and write.
const REGISTERS: u64 = 3;
/// How long one request may take before its outcome counts as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct ClientLog {
    /// Keys this client wrote and was told were written.
    pub acked: Vec<String>,
    pub failed: usize,
    /// Responses whose revision was below one this client saw before.
    pub went_back: Vec<(i64, i64)>,
}

pub struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<ClientLog>>,
    pub history: Arc<History>,
}

impl Workload {
    /// `clients` clients, each connected to every endpoint.
    pub fn start(endpoints: Vec<String>, clients: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let history = Arc::new(History::default());
        let tasks = (0..clients)
            .map(|c| tokio::spawn(client(c as u64, endpoints.clone(), stop.clone(), acked.clone(), history.clone())))
            .collect();
        Workload { stop, acked, tasks, history }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Waits until `more` further writes are acknowledged (at most `wait`);
    /// how long that took, or None.
    pub async fn wait_for_writes(&self, more: u64, wait: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let target = self.acked() + more;
        while self.acked() < target {
            if start.elapsed() > wait {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(start.elapsed())
    }

    pub async fn stop(self) -> (Vec<ClientLog>, Arc<History>) {
        self.stop.store(true, Ordering::Release);
        let mut logs = Vec::new();
        for t in self.tasks {
            logs.push(t.await.expect("workload client panicked"));
        }
        (logs, self.history)
    }
}

async fn connect(endpoints: &[String]) -> Option<Client> {
    let opts = ConnectOptions::new().with_timeout(REQUEST_TIMEOUT).with_connect_timeout(Duration::from_secs(1));
    Client::connect(endpoints, Some(opts)).await.ok()
}

async fn client(
    id: u64,
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    history: Arc<History>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut seen_rev = 0i64;
    let mut c = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let Some(cl) = c.as_mut() else {
            c = connect(&endpoints).await;
            if c.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        // A write of its own, then an operation on a shared key.
        let key = format!("w/{id}/{n}");
        let put = tokio::time::timeout(REQUEST_TIMEOUT, cl.put(key.clone(), "v", None)).await;
        match put {
            Ok(Ok(resp)) => {
                let rev = resp.header().map_or(0, |h| h.revision());
                if rev < seen_rev {
                    log.went_back.push((seen_rev, rev));
                }
                seen_rev = seen_rev.max(rev);
                log.acked.push(key);
                acked.fetch_add(1, Ordering::AcqRel);
            }
            _ => {
                log.failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        let reg = format!("reg/{}", n % REGISTERS);
        let call = history.now();
        if n.is_multiple_of(2) {
            let value = id << 32 | n;
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, cl.put(reg.clone(), value.to_string(), None)).await;
            let ret = matches!(outcome, Ok(Ok(_))).then(|| history.now());
            history.record(&reg, Event { call, ret, op: Op::Write(value) });
        } else {
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, cl.get(reg.clone(), None::<GetOptions>)).await;
            if let Ok(Ok(resp)) = outcome {
                let ret = history.now();
                let rev = resp.header().map_or(0, |h| h.revision());
                if rev < seen_rev {
                    log.went_back.push((seen_rev, rev));
                }
                seen_rev = seen_rev.max(rev);
                let value = resp.kvs().first().and_then(|kv| kv.value_str().ok()?.parse().ok());
                history.record(&reg, Event { call, ret: Some(ret), op: Op::Read(value) });
            }
        }
    }
    log
}
