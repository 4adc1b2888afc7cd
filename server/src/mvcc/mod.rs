//! Multi-version key-value storage on sled: every write creates a new store
//! revision, old revisions stay readable until compacted. Only this module
//! touches sled.

mod backend;
mod base;
mod defrag;
mod digest;
mod error;
mod install;
mod key_index;
mod leases;
mod revision;
mod snapshot;
mod store;

pub use key_index::KeyRange;
pub use leases::LeaseRecord;
pub use revision::Revision;
pub use snapshot::{SnapshotImage, SnapshotInfo};
pub use store::{
    BatchLimits, History, KvRead, MvccError, RangeOptions, RangeResult, ReadTxn, Store, TxnWrite, WriteBatch,
};
