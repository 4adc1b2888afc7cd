//! Key-range permissions: does the union of a user's granted ranges cover
//! the range a request touches? Ranges use etcd's conventions: an empty
//! `range_end` is the single key, `"\0"` means "to the end of the keyspace".

use crate::proto::authpb::{permission::Type, Permission};

/// Half-open `[start, end)`; `end` None is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn new(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                Some(next)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        Interval { start: key.to_vec(), end }
    }

    /// An empty interval (end at or before start) asks for nothing.
    fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|e| e.as_slice() <= self.start.as_slice())
    }
}

/// Whether a permission of type `granted` (as stored: an unknown value
/// allows nothing, as in etcd) allows access `wanted`.
pub fn allows(granted: i32, wanted: Type) -> bool {
    granted == Type::Readwrite as i32 || granted == wanted as i32
}

/// True when `perms` (already filtered to the wanted access) cover every key
/// of `[key, range_end)`.
pub fn covers<'a>(perms: impl IntoIterator<Item = &'a Permission>, key: &[u8], range_end: &[u8]) -> bool {
    let want = Interval::new(key, range_end);
    if want.is_empty() {
        return true;
    }
    let granted: Vec<Interval> = perms.into_iter().map(|p| Interval::new(&p.key, &p.range_end)).collect();
    // Walk from the start, each step jumping to the farthest end of a
    // granted interval that holds the current point.
    let mut at = want.start;
    loop {
        let reach = granted
            .iter()
            .filter(|g| {
                g.start.as_slice() <= at.as_slice() && g.end.as_ref().is_none_or(|e| e.as_slice() > at.as_slice())
            })
            .map(|g| g.end.clone())
            .max_by(|a, b| match (a, b) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, _) => std::cmp::Ordering::Greater,
                (_, None) => std::cmp::Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            });
        match (reach, &want.end) {
            (None, _) => return false,
            (Some(None), _) => return true,
            (Some(Some(end)), Some(want_end)) if end >= *want_end => return true,
            (Some(Some(end)), _) => at = end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(key: &str, end: &str) -> Permission {
        Permission { perm_type: Type::Read as i32, key: key.into(), range_end: end.into() }
    }

    #[test]
    fn single_keys_and_ranges() {
        let p = [perm("a", ""), perm("foo", "fop")];
        assert!(covers(&p, b"a", b""));
        assert!(!covers(&p, b"b", b""));
        assert!(!covers(&p, b"a", b"b"), "the key a alone does not cover a..b");
        assert!(covers(&p, b"foo", b"fop"));
        assert!(covers(&p, b"foo1", b""));
        assert!(covers(&p, b"foo1", b"foo9"));
        assert!(!covers(&p, b"foo", b"foq"));
        assert!(!covers(&p, b"foo", b"\0"));
    }

    #[test]
    fn adjacent_and_overlapping_grants_join() {
        let p = [perm("a", "c"), perm("b", "e"), perm("e", "g")];
        assert!(covers(&p, b"a", b"g"));
        assert!(!covers(&p, b"a", b"h"));
        let gap = [perm("a", "c"), perm("d", "g")];
        assert!(!covers(&gap, b"a", b"e"));
    }

    #[test]
    fn open_ended_ranges() {
        let all = [perm("", "\0")];
        assert!(covers(&all, b"", b"\0"));
        assert!(covers(&all, b"zzz", b""));
        let from_m = [perm("m", "\0")];
        assert!(covers(&from_m, b"x", b"\0"));
        assert!(!covers(&from_m, b"a", b"\0"));
        assert!(!covers(&[], b"a", b""));
        assert!(covers(&[], b"b", b"a"), "an empty range asks for nothing");
    }

    #[test]
    fn access_types() {
        assert!(allows(Type::Readwrite as i32, Type::Write));
        assert!(allows(Type::Read as i32, Type::Read));
        assert!(!allows(Type::Read as i32, Type::Write));
        assert!(!allows(7, Type::Read), "an unknown type allows nothing");
    }
}
