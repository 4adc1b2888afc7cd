//! Bad input gets etcd's answer (checked against a real etcd 3.5.1), the
//! server keeps serving, and nothing is half-applied.

use bytes::{Buf, BufMut};
use ferrocd::proto::etcdserverpb::kv_client::KvClient;
use ferrocd::proto::etcdserverpb::*;
use ferrocd_tests::member::Member;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends bytes as they are: a way to put malformed protobuf on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

async fn raw_call(endpoint: &str, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let channel = Channel::from_shared(endpoint.to_string()).expect("uri").connect().await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(tonic::Request::new(body), PathAndQuery::from_static(method), RawCodec).await.map(|r| r.into_inner())
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok(String),
    Err(Code, String),
}

fn strip(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        *h = ResponseHeader { revision: h.revision, ..Default::default() };
    }
}

async fn outcome<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>, fix: impl FnOnce(&mut T)) -> Outcome {
    match r {
        Ok(resp) => {
            let mut v = resp.into_inner();
            fix(&mut v);
            Outcome::Ok(format!("{v:?}"))
        }
        Err(s) => Outcome::Err(s.code(), s.message().to_string()),
    }
}

/// Everything both servers are asked, in order.
async fn bad_requests(kv: &mut KvClient<Channel>) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    let put = |k: &str, v: &str| PutRequest { key: k.into(), value: v.into(), ..Default::default() };
    for p in [put("a", "1"), put("b", "2"), put("c", "3")] {
        kv.put(p).await.expect("setup put");
    }
    let ranges = [
        ("range_end < key", RangeRequest { key: "c".into(), range_end: "a".into(), ..Default::default() }),
        ("range_end == key", RangeRequest { key: "b".into(), range_end: "b".into(), ..Default::default() }),
        ("empty key", RangeRequest::default()),
        (
            "unknown sort order",
            RangeRequest { key: "a".into(), range_end: vec![0], sort_order: 9, ..Default::default() },
        ),
        ("negative limit", RangeRequest { key: "a".into(), range_end: vec![0], limit: -5, ..Default::default() }),
        ("negative revision", RangeRequest { key: "a".into(), revision: -3, ..Default::default() }),
        ("future revision", RangeRequest { key: "a".into(), revision: 1000, ..Default::default() }),
    ];
    for (name, r) in ranges {
        out.push((name.to_string(), outcome(kv.range(r).await, |v| strip(&mut v.header)).await));
    }
    let deletes = [
        ("delete range_end < key", DeleteRangeRequest { key: "c".into(), range_end: "a".into(), prev_kv: true }),
        ("delete empty key", DeleteRangeRequest::default()),
    ];
    for (name, r) in deletes {
        out.push((name.to_string(), outcome(kv.delete_range(r).await, |v| strip(&mut v.header)).await));
    }
    let puts = [
        ("put empty key", put("", "v")),
        (
            "ignore_value with a value",
            PutRequest { key: "a".into(), value: "x".into(), ignore_value: true, ..Default::default() },
        ),
        (
            "ignore_lease with a lease",
            PutRequest { key: "a".into(), lease: 5, ignore_lease: true, ..Default::default() },
        ),
        ("ignore_value on a missing key", PutRequest { key: "zz".into(), ignore_value: true, ..Default::default() }),
        ("unknown lease", PutRequest { key: "a".into(), value: "x".into(), lease: 99, ..Default::default() }),
    ];
    for (name, r) in puts {
        out.push((name.to_string(), outcome(kv.put(r).await, |v| strip(&mut v.header)).await));
    }
    let op_put = |k: &str| RequestOp { request: Some(request_op::Request::RequestPut(put(k, "v"))) };
    let txns = [
        ("txn with an empty op", TxnRequest { success: vec![RequestOp { request: None }], ..Default::default() }),
        ("txn compare with empty key", TxnRequest { compare: vec![Compare::default()], ..Default::default() }),
        (
            "txn compare with unknown result",
            TxnRequest {
                compare: vec![Compare { key: "a".into(), result: 9, ..Default::default() }],
                success: vec![op_put("t1")],
                ..Default::default()
            },
        ),
        (
            "txn too many ops",
            TxnRequest { success: (0..129).map(|i| op_put(&format!("k{i}"))).collect(), ..Default::default() },
        ),
        ("txn duplicate put", TxnRequest { success: vec![op_put("d"), op_put("d")], ..Default::default() }),
        (
            "txn put then bad lease: nothing applied",
            TxnRequest {
                success: vec![
                    op_put("half"),
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: "x".into(),
                            lease: 42,
                            ..Default::default()
                        })),
                    },
                ],
                ..Default::default()
            },
        ),
    ];
    for (name, r) in txns {
        out.push((name.to_string(), outcome(kv.txn(r).await, |v| strip(&mut v.header)).await));
    }
    let compacts = [
        ("compact future", CompactionRequest { revision: 1000, physical: true }),
        ("compact negative", CompactionRequest { revision: -1, physical: false }),
    ];
    for (name, r) in compacts {
        out.push((name.to_string(), outcome(kv.compact(r).await, |v| strip(&mut v.header)).await));
    }
    out
}

/// Undecodable request bodies; only the gRPC code is etcd's contract here
/// (the message text comes from each gRPC library's decoder).
const GARBAGE: &[(&str, &[u8])] = &[
    ("invalid tag", &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ("truncated field", &[0x0a, 0x05, b'a']),
    ("wrong wire type", &[0x0d, 1, 2, 3, 4]),
];

#[tokio::test]
async fn bad_input_gets_etcds_answers_and_changes_nothing() {
    let Some((etcd, ferrocd)) = Member::etcd_and_ferrocd(&[]).await else { return };
    let mut want_kv = KvClient::connect(etcd.endpoint()).await.expect("etcd");
    let mut got_kv = KvClient::connect(ferrocd.endpoint()).await.expect("ferrocd");

    let want = bad_requests(&mut want_kv).await;
    let got = bad_requests(&mut got_kv).await;
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        assert_eq!(g, w, "{name}: ferrocd (left) differs from etcd (right)");
    }

    for (name, body) in GARBAGE {
        for method in ["/etcdserverpb.KV/Put", "/etcdserverpb.KV/Txn", "/etcdserverpb.KV/Range"] {
            let w = raw_call(&etcd.endpoint(), method, body.to_vec()).await.map_err(|s| s.code());
            let g = raw_call(&ferrocd.endpoint(), method, body.to_vec()).await.map_err(|s| s.code());
            assert_eq!(g, w, "{name} to {method}");
            assert_eq!(g, Err(Code::Internal), "{name} to {method}");
        }
    }

    // Still serving, and nothing refused wrote anything: the store holds the
    // three setup puts plus the one txn etcd lets through (an unknown compare
    // result passes), with the same contents as etcd's.
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let mut g = got_kv.range(all.clone()).await.expect("range").into_inner();
    let mut w = want_kv.range(all).await.expect("range").into_inner();
    strip(&mut g.header);
    strip(&mut w.header);
    assert_eq!(g, w);
    assert_eq!(g.header.as_ref().map(|h| h.revision), Some(5));
    assert_eq!(g.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), [&b"a"[..], b"b", b"c", b"t1"]);

    // etcd 3.5.1 panics on a txn whose ignore_value put follows a delete of
    // its key (a "\0".."\0" delete slips past the overlap check); ferrocd
    // refuses the whole txn and the delete does not happen.
    let del_then_put = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "a".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let err = got_kv.txn(del_then_put).await.expect_err("refused");
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "etcdserver: key not found"));
    let left =
        got_kv.range(RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).await.expect("range");
    let left = left.into_inner();
    assert_eq!((left.kvs.len(), left.header.expect("header").revision), (4, 5), "the refused txn changed nothing");

    // etcd 3.5.1 panics (the connection drops) on an unknown sort target;
    // ferrocd answers, sorting by key.
    let odd = RangeRequest { key: "a".into(), range_end: vec![0], sort_target: 9, sort_order: 2, ..Default::default() };
    let r = got_kv.range(odd).await.expect("ferrocd answers an unknown sort target").into_inner();
    assert_eq!(r.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(), [&b"t1"[..], b"c", b"b", b"a"]);
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_server_keeps_serving() {
    let member = Member::ferrocd(&["--max-request-bytes", "1024"]).await;
    let mut kv = KvClient::connect(member.endpoint()).await.expect("connect");
    // Above the limit but within gRPC's allowance: etcd's own error.
    let big = PutRequest { key: "k".into(), value: vec![b'v'; 4096], ..Default::default() };
    let err = kv.put(big).await.expect_err("too large");
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "etcdserver: request is too large"));
    // Beyond gRPC's receive limit (request bytes + 512 KiB): refused by gRPC.
    let huge = PutRequest { key: "k".into(), value: vec![b'v'; 600 * 1024], ..Default::default() };
    let err = kv.put(huge).await.expect_err("beyond gRPC limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let ok = kv.put(PutRequest { key: "k".into(), value: "small".into(), ..Default::default() }).await.expect("put");
    assert_eq!(ok.into_inner().header.expect("header").revision, 2, "the refused writes left no revision behind");
}
