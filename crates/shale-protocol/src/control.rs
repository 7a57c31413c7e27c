//! Transaction markers: the control batches (one control record each) a transaction
//! coordinator writes to every partition of a transaction when it commits or aborts, in
//! Kafka's format (`EndTransactionMarker`: key = version int16 + type int16, 0 abort and
//! 1 commit; value = version int16 + coordinator epoch int32). Control batches are never
//! compressed.

use crate::batch::{BatchError, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use bytes::{BufMut, BytesMut};

const CONTROL_ATTRIBUTES: i16 = 0x10 | 0x20; // transactional + control

/// An end-of-transaction marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnMarker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

fn put_varint(out: &mut BytesMut, v: i32) {
    let mut z = ((v << 1) ^ (v >> 31)) as u32;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

/// A marker batch for `producer_id`/`epoch`, stamped `timestamp`, base offset 0 (patched at
/// append like any batch).
pub fn marker_batch(
    producer_id: i64,
    epoch: i16,
    marker: EndTxnMarker,
    timestamp: i64,
) -> BytesMut {
    let mut record = BytesMut::with_capacity(24);
    record.put_u8(0); // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, 4);
    record.put_i16(0); // key version
    record.put_i16(i16::from(marker.commit));
    put_varint(&mut record, 6);
    record.put_i16(0); // value version
    record.put_i32(marker.coordinator_epoch);
    put_varint(&mut record, 0); // headers
    let mut body = BytesMut::with_capacity(record.len() + 5);
    put_varint(&mut body, record.len() as i32);
    body.extend_from_slice(&record);

    let mut b = BytesMut::with_capacity(HEADER_LEN + body.len());
    b.put_i64(0); // base offset
    b.put_i32((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32);
    b.put_i32(-1); // partition leader epoch
    b.put_i8(2);
    b.put_u32(0); // crc, below
    b.put_i16(CONTROL_ATTRIBUTES);
    b.put_i32(0); // last offset delta
    b.put_i64(timestamp);
    b.put_i64(timestamp);
    b.put_i64(producer_id);
    b.put_i16(epoch);
    b.put_i32(-1); // base sequence
    b.put_i32(1);
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The marker in a stored control batch; `None` for a control batch of another type
/// (Kafka also has leader-change and snapshot control records, never written here).
pub fn parse_marker(batch: &[u8]) -> Result<Option<EndTxnMarker>, BatchError> {
    let h = BatchHeader::parse(batch)?;
    if !h.is_control() {
        return Ok(None);
    }
    let corrupt = BatchError::Corrupt("control record");
    let mut pos = HEADER_LEN;
    let len = varint(batch, &mut pos).ok_or(corrupt)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| pos.checked_add(l))
        .filter(|&e| e <= batch.len())
        .ok_or(corrupt)?;
    let rec = &batch[pos..end];
    let mut p = 1usize; // attributes
    varint(rec, &mut p).ok_or(corrupt)?; // timestamp delta (varlong; small here)
    varint(rec, &mut p).ok_or(corrupt)?; // offset delta
    let key_len = varint(rec, &mut p).ok_or(corrupt)?;
    if key_len < 4 {
        return Err(corrupt);
    }
    let key = rec.get(p..p + 4).ok_or(corrupt)?;
    let kind = i16::from_be_bytes([key[2], key[3]]);
    p += key_len as usize;
    let value_len = varint(rec, &mut p).ok_or(corrupt)?;
    let coordinator_epoch = if value_len >= 6 {
        let v = rec.get(p..p + 6).ok_or(corrupt)?;
        i32::from_be_bytes([v[2], v[3], v[4], v[5]])
    } else {
        -1
    };
    Ok(match kind {
        0 | 1 => Some(EndTxnMarker {
            commit: kind == 1,
            coordinator_epoch,
        }),
        _ => None,
    })
}

/// A zigzag varint of at most 5 bytes.
fn varint(b: &[u8], pos: &mut usize) -> Option<i32> {
    let mut z: u32 = 0;
    for i in 0..5 {
        let byte = *b.get(*pos)?;
        *pos += 1;
        z |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((z >> 1) as i32) ^ -((z & 1) as i32));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn a_marker_batch_decodes_with_kafkas_codec_as_one_control_record() {
        let m = EndTxnMarker {
            commit: true,
            coordinator_epoch: 7,
        };
        let b = marker_batch(42, 3, m, 1_700_000_000_000);
        crate::batch::validate_batches(&b).unwrap();
        let mut buf = bytes::Bytes::from(b.to_vec());
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 1);
        let r = &set.records[0];
        assert!(r.control && r.transactional);
        assert_eq!((r.producer_id, r.producer_epoch), (42, 3));
        assert_eq!(r.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
        assert_eq!(r.value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 7][..]));
        assert_eq!(parse_marker(&b).unwrap(), Some(m));
    }

    #[test]
    fn an_abort_marker_parses_back_and_garbage_does_not_panic() {
        let m = EndTxnMarker {
            commit: false,
            coordinator_epoch: 0,
        };
        let b = marker_batch(1, 0, m, 5);
        assert_eq!(parse_marker(&b).unwrap(), Some(m));
        for cut in 0..b.len() {
            let _ = parse_marker(&b[..cut]);
        }
    }
}
