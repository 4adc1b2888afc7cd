//! Cluster alarms (NOSPACE, CORRUPT): raised and cleared through raft,
//! persisted with the backend, consulted on the write path.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use prost::Message;

use crate::mvcc::{MvccError, Store, WriteBatch};
use crate::proto::etcdserverpb::{alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType};

const META_ALARMS: &str = "alarms";

#[derive(Default)]
pub struct Alarms {
    active: RwLock<Vec<AlarmMember>>,
    /// Some alarm is active: without one, the checks on every read and
    /// write cost one atomic load, not a lock.
    raised: AtomicBool,
}

impl Alarms {
    pub fn load(store: &Store) -> Result<Alarms, MvccError> {
        let active = match store.meta(META_ALARMS)? {
            Some(bytes) => {
                AlarmResponse::decode(bytes.as_slice()).map_err(|e| MvccError::Corrupt(e.to_string()))?.alarms
            }
            None => Vec::new(),
        };
        let raised = AtomicBool::new(!active.is_empty());
        Ok(Alarms { active: RwLock::new(active), raised })
    }

    /// Takes the alarms the store holds now (after a snapshot install).
    pub fn reload(&self, store: &Store) -> Result<(), MvccError> {
        let loaded = Alarms::load(store)?;
        let mut active = self.active.write();
        *active = loaded.active.into_inner();
        self.raised.store(!active.is_empty(), Ordering::Release);
        Ok(())
    }

    pub fn list(&self) -> Vec<AlarmMember> {
        self.active.read().clone()
    }

    /// Whether `kind` is raised for `member` in particular.
    pub fn is_active_for(&self, kind: AlarmType, member: u64) -> bool {
        self.raised.load(Ordering::Acquire)
            && self.active.read().iter().any(|a| a.alarm == kind as i32 && a.member_id == member)
    }

    pub fn is_active(&self, kind: AlarmType) -> bool {
        self.raised.load(Ordering::Acquire) && self.active.read().iter().any(|a| a.alarm == kind as i32)
    }

    /// Applies a committed alarm request in `batch`, answering as etcd does:
    /// GET lists all, ACTIVATE returns the alarm, DEACTIVATE the removed one.
    pub fn apply(&self, batch: &mut WriteBatch<'_>, req: &AlarmRequest) -> AlarmResponse {
        let mut active = self.active.write();
        let target = AlarmMember { member_id: req.member_id, alarm: req.alarm };
        let alarms = match req.action() {
            AlarmAction::Get => active.clone(),
            AlarmAction::Activate if req.alarm != AlarmType::None as i32 => {
                if !active.contains(&target) {
                    active.push(target);
                }
                vec![target]
            }
            AlarmAction::Activate => Vec::new(),
            AlarmAction::Deactivate => match active.iter().position(|a| *a == target) {
                Some(i) => vec![active.remove(i)],
                None => Vec::new(),
            },
        };
        if req.action() != AlarmAction::Get {
            self.raised.store(!active.is_empty(), Ordering::Release);
            let persisted = AlarmResponse { alarms: active.clone(), ..Default::default() };
            batch.set_meta(META_ALARMS, &persisted.encode_to_vec());
        }
        AlarmResponse { alarms, ..Default::default() }
    }
}
