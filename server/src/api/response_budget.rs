//! What one client connection's responses may hold in memory before the
//! client reads them. A response waits in memory until HTTP/2 flow control
//! lets it go, and a client that opens many streams and never reads would
//! otherwise pin every response it asked for (2,000 ranges of a 1 MB value
//! held 2 GB). Each connection gets a budget of response bytes; a large
//! response takes its encoded size from it and gives it back when hyper is
//! done with its body, which hyper polls to the end only once the client has
//! taken the data. While the budget is spent, new reads on that connection
//! wait for room, and fail with etcd's "too many requests" after the request
//! timeout. Other connections are not affected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::Notify;
use tonic::{Response, Status};

use crate::error::EtcdError;
use crate::tls::ConnInfo;

/// One connection's budget.
#[derive(Debug)]
pub struct ResponseBudget {
    limit: u64,
    /// Bytes of responses built and not yet taken by the client.
    pending: AtomicU64,
    released: Notify,
}

/// A client connection's info, as tonic hands it to every request: the
/// transport's own, and the connection's response budget.
#[derive(Debug, Clone)]
pub struct ClientConn<T> {
    pub transport: T,
    pub budget: Arc<ResponseBudget>,
}

/// Bytes taken from a budget, given back when the last clone is dropped
/// (clonable, as response extensions must be).
#[derive(Debug, Clone)]
pub struct BudgetPermit {
    _held: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    budget: Arc<ResponseBudget>,
    bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.pending.fetch_sub(self.bytes, Ordering::AcqRel);
        // One waiter at a time (see `read`): waking them all would have
        // each build its response for one of them to keep.
        self.budget.released.notify_one();
    }
}

impl ResponseBudget {
    pub fn new(limit: u64) -> Arc<ResponseBudget> {
        Arc::new(ResponseBudget { limit, pending: AtomicU64::new(0), released: Notify::new() })
    }

    /// Bytes taken and not yet given back.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes `bytes` whether or not they fit: for results that exist
    /// already (an applied write's), which only a reply can release.
    fn take(self: &Arc<Self>, bytes: u64) -> BudgetPermit {
        self.pending.fetch_add(bytes, Ordering::AcqRel);
        BudgetPermit { _held: Arc::new(Held { budget: self.clone(), bytes }) }
    }

    /// Takes `bytes` if the budget is not spent yet (one response may go
    /// past the limit, so a response larger than the whole budget is served
    /// when nothing else is pending).
    fn try_take(self: &Arc<Self>, bytes: u64) -> Option<BudgetPermit> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| (p < self.limit).then_some(p + bytes))
            .ok()
            .map(|_| BudgetPermit { _held: Arc::new(Held { budget: self.clone(), bytes }) })
    }

    /// Waits until the budget has room (or the deadline passes).
    async fn room(&self, deadline: tokio::time::Instant) -> Result<(), Status> {
        loop {
            let released = self.released.notified();
            if self.pending() < self.limit {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(EtcdError::TooManyRequests.into());
            }
        }
    }
}

/// The budget of the connection a request came on (none for requests made
/// in-process).
pub fn of<T>(req: &tonic::Request<T>) -> Option<Arc<ResponseBudget>> {
    req.extensions().get::<ClientConn<ConnInfo>>().map(|c| c.budget.clone())
}

/// A read's response that fits the connection's budget: waits while the
/// budget is spent, builds the response, and takes its encoded size. Building
/// and taking run with no wait between them, so the budget always counts
/// every built response; if others took the room first, the response is
/// dropped and built again once there is room (a later read is as
/// linearizable as the first).
pub async fn read<M: Message>(
    budget: Option<Arc<ResponseBudget>>,
    timeout: Duration,
    mut build: impl FnMut() -> Result<M, Status>,
) -> Result<Response<M>, Status> {
    let Some(budget) = budget else {
        return build().map(Response::new);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        budget.room(deadline).await?;
        let msg = build()?;
        if let Some(permit) = budget.try_take(msg.encoded_len() as u64) {
            // Room left: the next waiter goes on too.
            if budget.pending() < budget.limit {
                budget.released.notify_one();
            }
            return Ok(with_permit(msg, permit));
        }
    }
}

/// An applied write's response: it exists already, so its size is taken
/// whether or not it fits.
pub fn written<M: Message>(budget: Option<Arc<ResponseBudget>>, msg: M) -> Response<M> {
    match budget {
        Some(b) => {
            let permit = b.take(msg.encoded_len() as u64);
            with_permit(msg, permit)
        }
        None => Response::new(msg),
    }
}

fn with_permit<M>(msg: M, permit: BudgetPermit) -> Response<M> {
    let mut resp = Response::new(msg);
    resp.extensions_mut().insert(permit);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_wait_while_the_budget_is_spent_and_go_on_when_it_is_released() {
        let budget = ResponseBudget::new(100);
        let first = read(Some(budget.clone()), Duration::from_secs(5), || Ok(vec![0u8; 150])).await.unwrap();
        assert!(budget.pending() > 150, "one response may go past the limit");
        // Spent: the next read waits, then fails with etcd's error.
        let err = read(Some(budget.clone()), Duration::from_millis(50), || Ok(vec![1u8; 10])).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::ResourceExhausted, "etcdserver: too many requests"));
        // Released while it waits: it goes on.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { read(Some(budget), Duration::from_secs(5), || Ok(vec![2u8; 10])).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(budget.pending(), second.get_ref().encoded_len() as u64);
        drop(second);
        assert_eq!(budget.pending(), 0);
        // A written result is taken even past the limit.
        let big = written(Some(budget.clone()), vec![3u8; 500]);
        assert!(budget.pending() >= 500);
        drop(big);
        assert_eq!(budget.pending(), 0);
    }
}
