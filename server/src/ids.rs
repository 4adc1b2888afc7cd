//! Member and cluster IDs, derived exactly as etcd derives them (the first
//! 8 bytes, big-endian, of a SHA-1): a member's from its sorted peer URLs
//! joined and the cluster token, the cluster's from the sorted member IDs.
//! The same flags give the same IDs as etcd's.

use sha1::{Digest, Sha1};

use crate::config::InitialMember;

fn id_of(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Zero means "none" in raft and in etcd's API.
    u64::from_be_bytes(first).max(1)
}

pub fn member_id(member: &InitialMember, token: &str) -> u64 {
    let mut sorted = member.peer_urls.clone();
    sorted.sort();
    id_of(format!("{}{token}", sorted.concat()).as_bytes())
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    id_of(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = InitialMember { name: "a".into(), peer_urls: vec!["http://10.0.0.1:2380".into()] };
        let b = InitialMember { name: "b".into(), peer_urls: vec!["http://10.0.0.2:2380".into()] };
        assert_eq!(member_id(&a, "t"), member_id(&a.clone(), "t"));
        assert_ne!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "other-token"));
        let (ia, ib) = (member_id(&a, "t"), member_id(&b, "t"));
        assert_eq!(cluster_id(&[ia, ib]), cluster_id(&[ib, ia]));
    }
}
