//! How a revision record's value is stored: a kind byte (put or tombstone)
//! and the `KeyValue`, and the start-up scan's partial decoding of it.

use prost::Message;

use super::error::{MvccError, Result};
use crate::proto::mvccpb::KeyValue;

pub(super) const KIND_PUT: u8 = 0;
pub(super) const KIND_TOMBSTONE: u8 = 1;

/// A revision record as stored.
pub(super) struct Record {
    pub(super) tombstone: bool,
    pub(super) kv: KeyValue,
}

pub(super) fn encode_value(kind: u8, kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + kv.encoded_len());
    out.push(kind);
    kv.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// What the start-up scan keeps of a stored value: it reads every revision
/// of a large store, so the value itself is neither decoded nor copied.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct IndexFields<'a> {
    pub(super) tombstone: bool,
    pub(super) key: std::borrow::Cow<'a, [u8]>,
    pub(super) created: i64,
    pub(super) version: i64,
    pub(super) value_len: usize,
}

pub(super) fn decode_index_fields(v: &[u8]) -> Result<IndexFields<'_>> {
    let (&kind, body) = v.split_first().ok_or_else(|| MvccError::Corrupt("empty value".into()))?;
    let tombstone = kind == KIND_TOMBSTONE;
    if let Some((key, created, version, value_len)) = leading_fields(body) {
        return Ok(IndexFields { tombstone, key: std::borrow::Cow::Borrowed(key), created, version, value_len });
    }
    let (tombstone, kv) = decode_value(v)?;
    let value_len = kv.value.len();
    Ok(IndexFields { tombstone, key: kv.key.into(), created: kv.create_revision, version: kv.version, value_len })
}

/// A `KeyValue`'s key, create_revision, version and value length, with the
/// other fields stepped over and the value not decoded. None where the
/// encoding is anything a plain `KeyValue` would not hold (a full decode
/// then decides).
fn leading_fields(mut body: &[u8]) -> Option<(&[u8], i64, i64, usize)> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let (mut key, mut created, mut version, mut value_len) = (&[][..], 0, 0, 0);
    while !body.is_empty() {
        match decode_key(&mut body).ok()? {
            (1, WireType::LengthDelimited) => key = length_delimited(&mut body)?,
            (2, WireType::Varint) => created = decode_varint(&mut body).ok()? as i64,
            (4, WireType::Varint) => version = decode_varint(&mut body).ok()? as i64,
            (5, WireType::LengthDelimited) => value_len = length_delimited(&mut body)?.len(),
            (_, WireType::Varint) => {
                decode_varint(&mut body).ok()?;
            }
            (_, WireType::LengthDelimited) => {
                length_delimited(&mut body)?;
            }
            _ => return None,
        }
    }
    Some((key, created, version, value_len))
}

/// Takes one length-delimited field's bytes off the front of `body`.
fn length_delimited<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(prost::encoding::decode_varint(body).ok()?).ok()?;
    let bytes = body.get(..len)?;
    *body = &body[len..];
    Some(bytes)
}

pub(super) fn decode_value(v: &[u8]) -> Result<(bool, KeyValue)> {
    let (kind, body) = v.split_first().ok_or_else(|| MvccError::Corrupt("empty value".into()))?;
    let kv = KeyValue::decode(body).map_err(|e| MvccError::Corrupt(e.to_string()))?;
    Ok((*kind == KIND_TOMBSTONE, kv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_field_decoding_matches_full_decoding() {
        for key_len in [1usize, 127, 128, 300, 70_000] {
            let key: Vec<u8> = (0..key_len).map(|i| (i % 251) as u8).collect();
            for (kind, created, version, lease) in
                [(KIND_PUT, 3, 2, 0), (KIND_PUT, 1 << 40, 1, 9), (KIND_TOMBSTONE, 0, 0, 0)]
            {
                let kv = KeyValue {
                    key: key.clone(),
                    create_revision: created,
                    mod_revision: 1 << 41,
                    version,
                    value: vec![1; 300],
                    lease,
                };
                let v = encode_value(kind, &kv);
                let want = IndexFields {
                    tombstone: kind == KIND_TOMBSTONE,
                    key: key.as_slice().into(),
                    created,
                    version,
                    value_len: kv.value.len(),
                };
                assert_eq!(decode_index_fields(&v).unwrap(), want);
                assert!(leading_fields(&v[1..]).is_some(), "read without a full decode");
            }
        }
        // Fields out of number order or repeated: the last one counts, as in prost.
        let body = [0x0a, 0x01, b'k', 0x10, 0x05, 0x20, 0x03, 0x2a, 0x01, b'x', 0x20, 0x07];
        let full = KeyValue::decode(&body[..]).unwrap();
        assert_eq!(leading_fields(&body), Some((&b"k"[..], full.create_revision, full.version, 1)));
        assert_eq!(full.version, 7);
        assert!(decode_index_fields(&[]).is_err(), "an empty value is corrupt");
        assert!(decode_index_fields(&[KIND_PUT, 0x0a, 0x05, b'a']).is_err(), "a truncated key is corrupt");
    }
}
