//! A linearizability checker for histories of reads and writes on keys,
//! in the manner of Wing & Gong with memoized states (as porcupine checks):
//! every key is a register, checked on its own (linearizability is local).
//! Writes write unique values; a write whose outcome the client never
//! learned (an error or a timeout) may have taken effect at any time after
//! it was called, or never.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

/// What one operation did, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write(u64),
    /// The value read (None: no such key).
    Read(Option<u64>),
}

/// One operation: when it was called, when it returned (None: its outcome
/// is unknown), in nanoseconds since the history began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub call: u64,
    pub ret: Option<u64>,
    pub op: Op,
}

/// A shared recorder for a test's clients.
pub struct History {
    start: Instant,
    events: Mutex<BTreeMap<String, Vec<Event>>>,
}

impl Default for History {
    fn default() -> History {
        History { start: Instant::now(), events: Mutex::default() }
    }
}

impl History {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, key: &str, event: Event) {
        self.events.lock().expect("history lock").entry(key.to_string()).or_default().push(event);
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.events.lock().expect("history lock").values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every key's history; Err names the first key that is not
    /// linearizable.
    pub fn check(&self) -> Result<(), String> {
        for (key, events) in self.events.lock().expect("history lock").iter() {
            check_register(events, None).map_err(|e| format!("key {key:?}: {e}"))?;
        }
        Ok(())
    }
}

/// Checks one register's history, starting from `initial`.
pub fn check_register(events: &[Event], initial: Option<u64>) -> Result<(), String> {
    let n = events.len();
    let mut ops: Vec<&Event> = events.iter().collect();
    ops.sort_by_key(|e| e.call);
    let ret = |e: &Event| e.ret.unwrap_or(u64::MAX);
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // Depth-first search over the order in which operations take effect.
    let mut done = vec![0u64; words];
    let mut path: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state = initial;
    // Per depth: the next candidate to try.
    let mut next_try: Vec<usize> = vec![0];
    let mut explored = 0u64;
    loop {
        let is_done = |d: &[u64], i: usize| d[i / 64] & (1 << (i % 64)) != 0;
        // Everything with a known outcome took effect: linearizable.
        if (0..n).all(|i| is_done(&done, i) || ops[i].ret.is_none()) {
            return Ok(());
        }
        explored += 1;
        if explored > 20_000_000 {
            return Err("the search space is too large to decide".into());
        }
        // An operation may take effect next only if it was called before
        // every remaining operation returned.
        let min_ret = (0..n).filter(|&i| !is_done(&done, i)).map(|i| ret(ops[i])).min().unwrap_or(u64::MAX);
        let depth = path.len();
        let mut advanced = false;
        let mut i = next_try[depth];
        while i < n && ops[i].call <= min_ret {
            if !is_done(&done, i) {
                let next_state = match &ops[i].op {
                    Op::Write(v) => Some(Some(*v)),
                    Op::Read(v) if *v == state => Some(state),
                    Op::Read(_) => None,
                };
                if let Some(next_state) = next_state {
                    let mut d = done.clone();
                    d[i / 64] |= 1 << (i % 64);
                    if seen.insert((d.clone(), next_state)) {
                        next_try[depth] = i + 1;
                        path.push((i, state));
                        done = d;
                        state = next_state;
                        next_try.push(0);
                        advanced = true;
                        break;
                    }
                }
            }
            i += 1;
        }
        if advanced {
            continue;
        }
        // Dead end: undo the last step.
        next_try.pop();
        let Some((last, before)) = path.pop() else {
            let stuck: Vec<&Event> = ops.iter().copied().filter(|e| e.ret.is_some()).take(20).collect();
            return Err(format!("no order of the {n} operations explains what the clients saw: {stuck:?}"));
        };
        done[last / 64] &= !(1 << (last % 64));
        state = before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: u64, v: u64) -> Event {
        Event { call, ret: Some(ret), op: Op::Write(v) }
    }
    fn r(call: u64, ret: u64, v: Option<u64>) -> Event {
        Event { call, ret: Some(ret), op: Op::Read(v) }
    }

    #[test]
    fn sequential_and_overlapping_histories_that_are_linearizable_pass() {
        assert!(check_register(&[w(0, 1, 1), r(2, 3, Some(1)), w(4, 5, 2), r(6, 7, Some(2))], None).is_ok());
        // A read overlapping a write may see either value.
        assert!(check_register(&[w(0, 10, 1), r(1, 2, None), r(3, 4, Some(1))], None).is_ok());
        // Concurrent writes in either order.
        assert!(check_register(&[w(0, 10, 1), w(0, 10, 2), r(11, 12, Some(1))], None).is_ok());
        assert!(check_register(&[w(0, 10, 1), w(0, 10, 2), r(11, 12, Some(2))], None).is_ok());
        // A write with an unknown outcome may never have happened...
        let lost = Event { call: 0, ret: None, op: Op::Write(9) };
        assert!(check_register(&[lost.clone(), r(1, 2, None)], None).is_ok());
        // ...or have happened late.
        assert!(check_register(&[lost, r(1, 2, None), r(3, 4, Some(9))], None).is_ok());
        assert!(check_register(&[], None).is_ok());
    }

    #[test]
    fn stale_and_impossible_reads_are_caught() {
        // A read after a finished write sees the old value: stale.
        assert!(check_register(&[w(0, 1, 1), r(2, 3, None)], None).is_err());
        // Going back in time: 2 then 1 after both writes finished in order.
        assert!(check_register(&[w(0, 1, 1), w(2, 3, 2), r(4, 5, Some(2)), r(6, 7, Some(1))], None).is_err());
        // A value nobody wrote.
        assert!(check_register(&[w(0, 1, 1), r(2, 3, Some(5))], None).is_err());
        // Two reads that order concurrent writes both ways.
        let h = [w(0, 10, 1), w(0, 10, 2), r(11, 12, Some(1)), r(13, 14, Some(2)), r(15, 16, Some(1))];
        assert!(check_register(&h, None).is_err());
    }

    #[test]
    fn long_concurrent_histories_are_decided() {
        // 200 writes, each overlapped by a read that sees the value before
        // or after it, and followed by a read that sees it.
        let mut h = Vec::new();
        let mut t = 0;
        let mut before = None;
        for v in 0..200u64 {
            h.push(w(t, t + 5, v));
            h.push(r(t + 1, t + 4, if v % 2 == 0 { before } else { Some(v) }));
            h.push(r(t + 6, t + 8, Some(v)));
            before = Some(v);
            t += 9;
        }
        assert_eq!(check_register(&h, None), Ok(()));
        // One stale read at the end makes it not linearizable.
        h.push(r(t + 1, t + 2, Some(3)));
        assert!(check_register(&h, None).is_err());
    }
}
