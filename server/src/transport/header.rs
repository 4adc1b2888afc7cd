//! Who is calling: every peer call carries the protocol version, the cluster
//! ID and the sender's member ID (as gRPC metadata; a raft stream opens with
//! them), checked by the receiver.

use tonic::metadata::MetadataMap;
use tonic::Status;

/// The peer protocol's version; a peer speaking another is refused.
/// 2: raft messages on their own framed stream instead of a gRPC stream.
pub const PROTOCOL_VERSION: u32 = 2;

const VERSION_KEY: &str = "ferrocd-peer-protocol";
const CLUSTER_KEY: &str = "ferrocd-cluster-id";
const FROM_KEY: &str = "ferrocd-member-id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHeader {
    pub version: u32,
    /// 0 from a member that does not know the cluster yet (it may only ask
    /// for the cluster's membership).
    pub cluster_id: u64,
    pub from: u64,
}

impl PeerHeader {
    pub fn new(cluster_id: u64, from: u64) -> PeerHeader {
        PeerHeader { version: PROTOCOL_VERSION, cluster_id, from }
    }

    pub fn write(&self, md: &mut MetadataMap) {
        for (key, value) in [
            (VERSION_KEY, self.version.to_string()),
            (CLUSTER_KEY, format!("{:x}", self.cluster_id)),
            (FROM_KEY, format!("{:x}", self.from)),
        ] {
            if let Ok(v) = value.parse() {
                md.insert(key, v);
            }
        }
    }

    pub fn read(md: &MetadataMap) -> Result<PeerHeader, Status> {
        let field = |key: &str, radix: u32| -> Result<u64, Status> {
            let text = md
                .get(key)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Status::invalid_argument(format!("not a ferrocd peer: no {key} header")))?;
            u64::from_str_radix(text, radix).map_err(|_| Status::invalid_argument(format!("bad {key} header {text:?}")))
        };
        Ok(PeerHeader {
            version: field(VERSION_KEY, 10)? as u32,
            cluster_id: field(CLUSTER_KEY, 16)?,
            from: field(FROM_KEY, 16)?,
        })
    }

    /// Whether a call with header `theirs` may reach this member. A refusal
    /// is logged here, once per call.
    pub fn admit(&self, theirs: &PeerHeader, allow_unknown_cluster: bool) -> Result<(), Status> {
        if theirs.version != self.version {
            tracing::warn!(
                peer = format!("{:x}", theirs.from),
                version = theirs.version,
                "refused a peer speaking another protocol version"
            );
            return Err(Status::failed_precondition(format!(
                "peer protocol version {} is not {} (this member's)",
                theirs.version, self.version
            )));
        }
        let unknown_ok = allow_unknown_cluster && theirs.cluster_id == 0;
        if theirs.cluster_id != self.cluster_id && !unknown_ok {
            tracing::warn!(
                peer = format!("{:x}", theirs.from),
                their_cluster = format!("{:x}", theirs.cluster_id),
                cluster = format!("{:x}", self.cluster_id),
                "refused a peer of another cluster"
            );
            return Err(Status::failed_precondition("etcdserver: cluster ID mismatch"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_other_clusters_are_refused() {
        let mine = PeerHeader::new(0xabc, 1);
        let mut md = MetadataMap::new();
        PeerHeader::new(0xabc, 2).write(&mut md);
        let theirs = PeerHeader::read(&md).unwrap();
        assert_eq!(theirs, PeerHeader::new(0xabc, 2));
        assert!(mine.admit(&theirs, false).is_ok());
        let other = PeerHeader::new(0xdef, 2);
        assert_eq!(mine.admit(&other, false).unwrap_err().message(), "etcdserver: cluster ID mismatch");
        assert!(mine.admit(&PeerHeader::new(0, 2), true).is_ok());
        assert!(mine.admit(&PeerHeader::new(0, 2), false).is_err());
        assert!(PeerHeader::read(&MetadataMap::new()).is_err());
    }
}
