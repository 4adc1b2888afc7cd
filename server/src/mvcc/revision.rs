//! Store revisions: `main` is the store revision a write (or txn) created,
//! `sub` orders the changes inside it. Encoded big-endian so sled orders keys
//! by revision.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Revision> {
        let main = u64::from_be_bytes(b.get(..8)?.try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?) as i64;
        Some(Revision { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 0),
            Revision::new(256, 3),
        ];
        for w in revs.windows(2) {
            assert!(w[0].to_bytes() < w[1].to_bytes());
            assert_eq!(Revision::from_bytes(&w[1].to_bytes()), Some(w[1]));
        }
    }
}
