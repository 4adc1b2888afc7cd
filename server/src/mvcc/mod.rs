//! Multi-version key-value storage on sled: every write creates a new store
//! revision, old revisions stay readable until compacted. Only this module
//! touches sled.

mod backend;
mod backlog;
mod base;
mod defrag;
mod digest;
mod error;
mod install;
mod key_index;
mod leases;
mod read;
mod record;
mod revision;
mod snapshot;
mod state;
mod store;
mod txn;

pub use backlog::BatchLimits;
pub use key_index::KeyRange;
pub use leases::LeaseRecord;
pub use read::{KvRead, RangeOptions, RangeResult, ReadTxn};
pub use revision::Revision;
pub use snapshot::{SnapshotImage, SnapshotInfo};
pub use store::{History, MvccError, Store};
pub use txn::{TxnWrite, WriteBatch};
