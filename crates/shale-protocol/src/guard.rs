//! The request guard: walks a request frame against [`crate::schema`] before
//! `kafka-protocol` decodes it.
//!
//! The codec sizes `Vec::with_capacity` from array counts read off the wire, and an
//! allocation failure aborts the process. The guard rejects any count or length that the
//! bytes left in the frame cannot back (a count of `n` needs at least `n` times the smallest
//! encoding of one element), so whatever the codec is later asked to allocate is bounded by
//! the frame size. It reads fields in the codec's order and, where Kafka's own parser also
//! refuses them, is stricter than the codec: truncation, nulls where the schema has none,
//! known tagged values whose declared size does not match, overlong varints and invalid
//! UTF-8 are all refused. Like the codec and Kafka's own parser it ignores bytes after the
//! last field (librdkafka sends some) and takes tags in any order.

use crate::schema::{self, Field, Ty};
use kafka_protocol::messages::ApiKey;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Shale has no schema for this API version, so it cannot check it.
    #[error("no request schema for api key {api_key} v{version}")]
    NoSchema { api_key: i16, version: i16 },
    #[error("{field} at byte {at}: {reason}")]
    Field {
        field: &'static str,
        at: usize,
        reason: Reason,
    },
}

/// What was wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("truncated")]
    Truncated,
    #[error("varint longer than 5 bytes or above u32")]
    BadVarint,
    #[error("negative length {0}")]
    NegativeLength(i64),
    #[error("null is not allowed here")]
    UnexpectedNull,
    #[error("length {len} exceeds the {remaining} bytes left")]
    LengthTooLarge { len: u64, remaining: usize },
    #[error("count {count} needs at least {min_bytes} bytes, {remaining} left")]
    CountTooLarge {
        count: u64,
        min_bytes: u64,
        remaining: usize,
    },
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("tag {tag} is not valid in this version")]
    TagNotInVersion { tag: u32 },
    #[error("tagged value of declared size {size} used {used} bytes")]
    TagSize { size: u32, used: usize },
}

/// Checks a whole request frame (header and body, without the length prefix) of `api`
/// at `version`. `Ok` means the codec can decode it without any allocation larger than the
/// frame justifies.
pub fn check_request(frame: &[u8], api: ApiKey, version: i16) -> Result<(), GuardError> {
    let message = schema::request(api)
        .filter(|m| m.versions.contains(version))
        .ok_or(GuardError::NoSchema {
            api_key: api as i16,
            version,
        })?;
    let mut cur = Cursor { buf: frame, pos: 0 };
    walk_header(&mut cur, api.request_header_version(version))?;
    let flexible = message.is_flexible(version);
    walk_struct(&mut cur, message.fields, version, flexible)
}

/// Checks a consumer-protocol subscription (JoinGroup protocol metadata after its int16
/// version) before `ConsumerProtocolSubscription::decode` sees it. Bytes after the fields
/// of `version` are allowed: a newer client's subscription carries fields we do not know.
pub fn check_consumer_subscription(body: &[u8], version: i16) -> Result<(), GuardError> {
    let message = &schema::consumer_protocol_subscription::MESSAGE;
    if !message.versions.contains(version) {
        return Err(GuardError::NoSchema {
            api_key: -1,
            version,
        });
    }
    let mut cur = Cursor { buf: body, pos: 0 };
    walk_struct(&mut cur, message.fields, version, false)
}

/// Request header v0: api key, version, correlation id; v1 adds a nullable int16-length
/// client id (never compact); v2 adds a tagged-field section with no known tags.
fn walk_header(cur: &mut Cursor<'_>, header_version: i16) -> Result<(), GuardError> {
    cur.take(8).map_err(|r| cur.err("header", r))?;
    if header_version >= 1 {
        walk_value(cur, "client_id", &Ty::Str, true, 0, false)?;
    }
    if header_version >= 2 {
        walk_tags(cur, &[], 0)?;
    }
    Ok(())
}

fn walk_struct(
    cur: &mut Cursor<'_>,
    fields: &'static [Field],
    version: i16,
    flexible: bool,
) -> Result<(), GuardError> {
    for field in fields {
        if field.tag.is_none() && field.present_in(version) {
            walk_value(
                cur,
                field.name,
                &field.ty,
                field.nullable_in(version),
                version,
                flexible,
            )?;
        }
    }
    if flexible {
        walk_tags(cur, fields, version)?;
    }
    Ok(())
}

/// A tagged-field section: count, then (tag, size, value). Known tags are decoded by the
/// codec straight from the buffer, so their value must fill exactly the declared size for
/// the codec and the guard to stay in step; unknown tags are skipped by size.
fn walk_tags(
    cur: &mut Cursor<'_>,
    fields: &'static [Field],
    version: i16,
) -> Result<(), GuardError> {
    let at = cur.pos;
    let count = cur.uvarint().map_err(|r| cur.err("tagged fields", r))?;
    // Each entry takes at least two bytes (tag and size).
    check_count(cur, "tagged fields", at, u64::from(count), 2)?;
    for _ in 0..count {
        let at = cur.pos;
        let tag = cur.uvarint().map_err(|r| cur.err("tag", r))?;
        let size = cur.uvarint().map_err(|r| cur.err("tag size", r))?;
        let body = cur.take_len("tagged value", u64::from(size))?;
        let Some(field) = fields.iter().find(|f| f.tag == Some(tag)) else {
            continue;
        };
        if !field.present_in(version) {
            return Err(GuardError::Field {
                field: field.name,
                at,
                reason: Reason::TagNotInVersion { tag },
            });
        }
        let value_at = cur.pos - body.len();
        let mut sub = Cursor { buf: body, pos: 0 };
        walk_value(
            &mut sub,
            field.name,
            &field.ty,
            field.nullable_in(version),
            version,
            true,
        )
        .map_err(|e| e.shifted(value_at))?;
        if sub.remaining() != 0 {
            return Err(GuardError::Field {
                field: field.name,
                at,
                reason: Reason::TagSize {
                    size,
                    used: sub.pos,
                },
            });
        }
    }
    Ok(())
}

fn walk_value(
    cur: &mut Cursor<'_>,
    name: &'static str,
    ty: &'static Ty,
    nullable: bool,
    version: i16,
    flexible: bool,
) -> Result<(), GuardError> {
    let fixed =
        |cur: &mut Cursor<'_>, n: usize| cur.take(n).map(drop).map_err(|r| cur.err(name, r));
    match ty {
        Ty::Bool | Ty::I8 => fixed(cur, 1),
        Ty::I16 => fixed(cur, 2),
        Ty::I32 => fixed(cur, 4),
        Ty::I64 | Ty::F64 => fixed(cur, 8),
        Ty::Uuid => fixed(cur, 16),
        Ty::Str => {
            let at = cur.pos;
            let len = if flexible {
                cur.compact_len()
            } else {
                cur.i16().map(i64::from)
            };
            let Some(len) = nullable_len(cur, name, at, len, nullable)? else {
                return Ok(());
            };
            let text = cur.take_len(name, len)?;
            if std::str::from_utf8(text).is_err() {
                return Err(GuardError::Field {
                    field: name,
                    at,
                    reason: Reason::InvalidUtf8,
                });
            }
            Ok(())
        }
        Ty::Bytes | Ty::Records => {
            let at = cur.pos;
            let len = if flexible {
                cur.compact_len()
            } else {
                cur.i32().map(i64::from)
            };
            if let Some(len) = nullable_len(cur, name, at, len, nullable)? {
                cur.take_len(name, len)?;
            }
            Ok(())
        }
        Ty::Array(element) => {
            let at = cur.pos;
            let count = if flexible {
                cur.compact_len()
            } else {
                cur.i32().map(i64::from)
            };
            let Some(count) = nullable_len(cur, name, at, count, nullable)? else {
                return Ok(());
            };
            // A zero-size element would let any count through; one byte is the floor.
            let min = min_size(element, version, flexible).max(1);
            check_count(cur, name, at, count, min)?;
            for _ in 0..count {
                walk_value(cur, name, element, false, version, flexible)?;
            }
            Ok(())
        }
        Ty::Struct(fields) => walk_struct(cur, fields, version, flexible),
    }
}

/// Turns a decoded length into `None` for null, refusing null where not allowed and any
/// other negative value.
fn nullable_len(
    cur: &Cursor<'_>,
    name: &'static str,
    at: usize,
    len: Result<i64, Reason>,
    nullable: bool,
) -> Result<Option<u64>, GuardError> {
    let bad = |reason| GuardError::Field {
        field: name,
        at,
        reason,
    };
    match len.map_err(|r| cur.err(name, r))? {
        -1 if nullable => Ok(None),
        -1 => Err(bad(Reason::UnexpectedNull)),
        n if n < 0 => Err(bad(Reason::NegativeLength(n))),
        n => Ok(Some(n.unsigned_abs())),
    }
}

fn check_count(
    cur: &Cursor<'_>,
    name: &'static str,
    at: usize,
    count: u64,
    min: u64,
) -> Result<(), GuardError> {
    let min_bytes = count.saturating_mul(min);
    if min_bytes > cur.remaining() as u64 {
        return Err(GuardError::Field {
            field: name,
            at,
            reason: Reason::CountTooLarge {
                count,
                min_bytes,
                remaining: cur.remaining(),
            },
        });
    }
    Ok(())
}

/// The fewest bytes one value of `ty` can take on the wire at `version`.
pub fn min_size(ty: &Ty, version: i16, flexible: bool) -> u64 {
    let length_prefix = |classic: u64| if flexible { 1 } else { classic };
    match ty {
        Ty::Bool | Ty::I8 => 1,
        Ty::I16 => 2,
        Ty::I32 => 4,
        Ty::I64 | Ty::F64 => 8,
        Ty::Uuid => 16,
        Ty::Str => length_prefix(2),
        Ty::Bytes | Ty::Records | Ty::Array(_) => length_prefix(4),
        Ty::Struct(fields) => {
            let body: u64 = fields
                .iter()
                .filter(|f| f.tag.is_none() && f.present_in(version))
                .map(|f| min_size(&f.ty, version, flexible))
                .sum();
            body + u64::from(flexible)
        }
    }
}

impl GuardError {
    /// Re-bases the offset of an error found inside a tagged value's sub-buffer.
    fn shifted(self, base: usize) -> Self {
        match self {
            GuardError::Field { field, at, reason } => GuardError::Field {
                field,
                at: at + base,
                reason,
            },
            other => other,
        }
    }
}

/// Bounds-checked reads over the frame; every read fails with `Truncated` rather than
/// panicking.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn err(&self, field: &'static str, reason: Reason) -> GuardError {
        GuardError::Field {
            field,
            at: self.pos,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Reason> {
        let end = self.pos.checked_add(n).ok_or(Reason::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(Reason::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// Takes a length read off the wire, refusing it before slicing if the frame is shorter.
    fn take_len(&mut self, name: &'static str, len: u64) -> Result<&'a [u8], GuardError> {
        let remaining = self.remaining();
        match usize::try_from(len) {
            Ok(n) if n <= remaining => self.take(n).map_err(|r| self.err(name, r)),
            _ => Err(self.err(name, Reason::LengthTooLarge { len, remaining })),
        }
    }

    fn i16(&mut self) -> Result<i16, Reason> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, Reason> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint as the codec reads it (at most 5 bytes). Encodings the codec
    /// would silently truncate are refused.
    fn uvarint(&mut self) -> Result<u32, Reason> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = *self.take(1)?.first().ok_or(Reason::Truncated)?;
            if i == 4 && byte > 0x0f {
                return Err(Reason::BadVarint);
            }
            value |= u32::from(byte & 0x7f) << (i * 7);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Reason::BadVarint)
    }

    /// A compact length: varint `n + 1`, with 0 for null (returned as -1).
    fn compact_len(&mut self) -> Result<i64, Reason> {
        self.uvarint().map(|n| i64::from(n) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(api: ApiKey, version: i16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(api as i16).to_be_bytes());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&7i32.to_be_bytes());
        out.extend_from_slice(&1i16.to_be_bytes());
        out.push(b'c');
        if api.request_header_version(version) >= 2 {
            out.push(0);
        }
        out
    }

    fn reason(result: Result<(), GuardError>) -> Reason {
        match result {
            Err(GuardError::Field { reason, .. }) => reason,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_metadata_v1_topic_count_of_i32_max_is_refused() {
        let mut frame = header(ApiKey::Metadata, 1);
        frame.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        assert!(matches!(
            reason(check_request(&frame, ApiKey::Metadata, 1)),
            Reason::CountTooLarge {
                count: 0x7fff_ffff,
                ..
            }
        ));
    }

    #[test]
    fn a_huge_compact_count_in_metadata_v12_is_refused() {
        let mut frame = header(ApiKey::Metadata, 12);
        frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            reason(check_request(&frame, ApiKey::Metadata, 12)),
            Reason::CountTooLarge { .. }
        ));
    }

    #[test]
    fn a_huge_compact_count_in_create_topics_v5_is_refused() {
        let mut frame = header(ApiKey::CreateTopics, 5);
        frame.extend_from_slice(&[0xfe, 0xff, 0xff, 0x7f]);
        frame.extend_from_slice(&[0; 16]);
        assert!(matches!(
            reason(check_request(&frame, ApiKey::CreateTopics, 5)),
            Reason::CountTooLarge { .. }
        ));
    }

    #[test]
    fn a_huge_partition_count_nested_in_a_produce_topic_is_refused() {
        let mut frame = header(ApiKey::Produce, 7);
        frame.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
        frame.extend_from_slice(&1i16.to_be_bytes()); // acks
        frame.extend_from_slice(&1000i32.to_be_bytes()); // timeout
        frame.extend_from_slice(&1i32.to_be_bytes()); // one topic
        frame.extend_from_slice(&1i16.to_be_bytes());
        frame.push(b't');
        frame.extend_from_slice(&0x4000_0000i32.to_be_bytes()); // partitions
        frame.extend_from_slice(&[0; 32]);
        assert!(matches!(
            reason(check_request(&frame, ApiKey::Produce, 7)),
            Reason::CountTooLarge {
                count: 0x4000_0000,
                ..
            }
        ));
    }

    #[test]
    fn a_string_longer_than_the_frame_is_refused() {
        let mut frame = header(ApiKey::Metadata, 1);
        frame.extend_from_slice(&1i32.to_be_bytes());
        frame.extend_from_slice(&0x7fffi16.to_be_bytes());
        frame.extend_from_slice(b"abc");
        assert!(matches!(
            reason(check_request(&frame, ApiKey::Metadata, 1)),
            Reason::LengthTooLarge { len: 0x7fff, .. }
        ));
    }

    #[test]
    fn a_negative_length_other_than_null_is_refused() {
        let mut frame = header(ApiKey::Metadata, 1);
        frame.extend_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(
            reason(check_request(&frame, ApiKey::Metadata, 1)),
            Reason::NegativeLength(-2)
        );
    }

    #[test]
    fn null_is_refused_where_the_schema_has_no_null() {
        let mut frame = header(ApiKey::Metadata, 0);
        frame.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            reason(check_request(&frame, ApiKey::Metadata, 0)),
            Reason::UnexpectedNull
        );
    }

    #[test]
    fn a_null_topic_list_is_accepted_from_metadata_v1() {
        let mut frame = header(ApiKey::Metadata, 1);
        frame.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(check_request(&frame, ApiKey::Metadata, 1), Ok(()));
    }

    #[test]
    fn a_huge_client_id_length_in_the_header_is_refused() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&3i16.to_be_bytes());
        frame.extend_from_slice(&1i16.to_be_bytes());
        frame.extend_from_slice(&0i32.to_be_bytes());
        frame.extend_from_slice(&0x7000i16.to_be_bytes());
        assert!(matches!(
            reason(check_request(&frame, ApiKey::Metadata, 1)),
            Reason::LengthTooLarge { .. }
        ));
    }

    #[test]
    fn bytes_after_the_last_field_are_ignored_as_the_codec_and_kafka_do() {
        // librdkafka 2.x's Metadata v12 "all topics" request, as captured from
        // confluent-kafka-python 2.16.1: three bytes follow the body's tagged fields.
        let frame = [
            0x00, 0x03, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x03, 0x00, 0x07, b'r', b'd', b'k', b'a',
            b'f', b'k', b'a', 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        ];
        assert_eq!(check_request(&frame, ApiKey::Metadata, 12), Ok(()));
    }

    #[test]
    fn a_known_tag_must_fill_its_declared_size() {
        // Fetch v12 body with tag 0 (cluster id) declared as 5 bytes but holding 2.
        let mut frame = header(ApiKey::Fetch, 12);
        frame.extend_from_slice(&[0; 4 * 4 + 1 + 4 + 4]); // replica..session_epoch
        frame.extend_from_slice(&[1, 1, 1]); // topics, forgotten, rack id: empty
        frame.extend_from_slice(&[1, 0, 5, 2, b'x', 0, 0, 0]);
        assert!(matches!(
            reason(check_request(&frame, ApiKey::Fetch, 12)),
            Reason::TagSize { size: 5, used: 2 }
        ));
    }

    #[test]
    fn a_tagged_field_count_beyond_the_frame_is_refused() {
        let mut frame = header(ApiKey::Metadata, 12);
        frame.extend_from_slice(&[1, 0, 0]); // topics empty, two booleans
        frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            reason(check_request(&frame, ApiKey::Metadata, 12)),
            Reason::CountTooLarge { .. }
        ));
    }

    #[test]
    fn an_api_without_a_schema_is_refused() {
        let frame = header(ApiKey::DescribeDelegationToken, 1);
        assert_eq!(
            check_request(&frame, ApiKey::DescribeDelegationToken, 1),
            Err(GuardError::NoSchema {
                api_key: 41,
                version: 1
            })
        );
    }

    #[test]
    fn a_subscription_claiming_i32_max_topics_is_refused() {
        let body = 0x7fff_ffffi32.to_be_bytes();
        assert!(matches!(
            reason(check_consumer_subscription(&body, 1)),
            Reason::CountTooLarge { .. }
        ));
    }

    #[test]
    fn a_subscription_may_carry_fields_of_a_newer_version() {
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_be_bytes()); // no topics
        body.extend_from_slice(&(-1i32).to_be_bytes()); // user data: null
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(check_consumer_subscription(&body, 0), Ok(()));
    }

    #[test]
    fn every_advertised_api_version_has_a_schema() {
        for &(api, min, max) in schema::ADVERTISED {
            let codec = api.valid_versions();
            for v in min.max(codec.min)..=max.min(codec.max) {
                assert!(
                    schema::request(api).is_some_and(|m| m.versions.contains(v)),
                    "{api:?} v{v}"
                );
            }
        }
    }
}
