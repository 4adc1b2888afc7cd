//! Requests waiting for their proposal to be applied, by proposal ID.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::oneshot;

pub struct Wait<T> {
    waiters: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Default for Wait<T> {
    fn default() -> Self {
        Wait { waiters: Mutex::new(HashMap::new()) }
    }
}

impl<T> Wait<T> {
    pub fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id, tx);
        rx
    }

    /// Delivers the outcome; a waiter that gave up (timed out) is ignored.
    pub fn trigger(&self, id: u64, value: T) {
        if let Some(tx) = self.waiters.lock().remove(&id) {
            let _ = tx.send(value);
        }
    }

    /// Requests waiting for their proposal.
    pub fn len(&self) -> usize {
        self.waiters.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn cancel(&self, id: u64) {
        self.waiters.lock().remove(&id);
    }
}
