//! The request envelope: peek at api key/version/correlation id, decode header and body
//! once the version is known to be supported, and encode responses with the right header.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

/// The fixed prefix every request starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("request of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("encoding response: {0}")]
    Encode(String),
}

/// Reads api key, version and correlation id without decoding anything else.
pub fn peek(frame: &[u8]) -> Result<Peek, EnvelopeError> {
    if frame.len() < 8 {
        return Err(EnvelopeError::TooShort(frame.len()));
    }
    Ok(Peek {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

/// Decodes header and body. The caller must have checked that `version` is one it supports
/// (the codecs of `kafka-protocol` do not check it). The frame is first walked by
/// [`crate::guard::check_request`] (an API without a schema is refused), and decoding is
/// guarded against panics in the codec so that malformed input can only ever produce an
/// error.
pub fn decode_request(
    frame: Bytes,
    api: ApiKey,
    version: i16,
) -> Result<(RequestHeader, RequestKind), EnvelopeError> {
    let malformed = |reason: String| EnvelopeError::Malformed {
        api,
        version,
        reason,
    };
    // The codec pre-allocates from counts on the wire; the guard makes sure none exceeds
    // what the frame can back before the codec sees it.
    crate::guard::check_request(&frame, api, version).map_err(|e| malformed(e.to_string()))?;
    let result = std::panic::catch_unwind(move || {
        let mut buf = frame;
        let header = RequestHeader::decode(&mut buf, api.request_header_version(version))?;
        let body = RequestKind::decode(api, &mut buf, version)?;
        Ok::<_, anyhow::Error>((header, body))
    });
    match result {
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(e)) => Err(malformed(e.to_string())),
        Err(_) => Err(malformed("codec panicked".into())),
    }
}

/// Encodes a complete response frame (length prefix, header, body).
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, EnvelopeError> {
    // A fetch response carries up to `fetch.max.bytes` of records: size the frame once
    // instead of letting it double its way there (a transient extra copy of the records).
    let capacity = match body {
        ResponseKind::Fetch(f) => f.compute_size(version).unwrap_or(0),
        _ => 0,
    };
    let mut buf = BytesMut::with_capacity(capacity.saturating_add(64));
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api.response_header_version(version))
        .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    body.encode(&mut buf, version)
        .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The answer to an ApiVersions request whose version the broker does not support: a v0
/// response (header v0) with UNSUPPORTED_VERSION and the supported ranges, so the client can
/// retry with a version both sides know (KIP-511).
pub fn unsupported_api_versions(
    correlation_id: i32,
    supported: &ApiVersionsResponse,
) -> Result<Bytes, EnvelopeError> {
    let body = supported
        .clone()
        .with_error_code(kafka_protocol::error::ResponseError::UnsupportedVersion.code());
    encode_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn request(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("t")))
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_flexible_and_non_flexible_requests() {
        for v in [0, 3, 4] {
            let frame = request(
                ApiKey::ApiVersions,
                v,
                &ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("x"))
                    .with_client_software_version(StrBytes::from_static_str("1")),
            );
            let p = peek(&frame).unwrap();
            assert_eq!((p.api_key, p.api_version, p.correlation_id), (18, v, 42));
            let (h, body) = decode_request(frame, ApiKey::ApiVersions, v).unwrap();
            assert_eq!(h.correlation_id, 42);
            assert!(matches!(body, RequestKind::ApiVersions(_)));
        }
        let frame = request(ApiKey::Metadata, 12, &MetadataRequest::default());
        assert!(decode_request(frame, ApiKey::Metadata, 12).is_ok());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(peek(&[0, 1, 2]).is_err());
        for len in 8..200usize {
            let junk: Bytes = (0..len).map(|i| (i * 131 + 7) as u8).collect();
            for api in [
                ApiKey::Produce,
                ApiKey::Fetch,
                ApiKey::Metadata,
                ApiKey::CreateTopics,
            ] {
                let _ = decode_request(junk.clone(), api, api.valid_versions().max);
            }
        }
    }

    #[test]
    fn a_metadata_v1_request_claiming_i32_max_topics_is_malformed_not_an_abort() {
        // The 20-byte frame that made the codec ask for ~150 GB before the guard existed.
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Metadata as i16);
        frame.put_i16(1);
        frame.put_i32(42);
        frame.put_i16(6);
        frame.put_slice(b"client");
        frame.put_i32(0x7fff_ffff);
        assert_eq!(frame.len(), 20);
        let err = decode_request(frame.freeze(), ApiKey::Metadata, 1).unwrap_err();
        assert!(
            matches!(&err, EnvelopeError::Malformed { reason, .. } if reason.contains("count 2147483647")),
            "{err}"
        );
    }

    #[test]
    fn unsupported_api_versions_is_a_v0_response() {
        let frame = unsupported_api_versions(7, &ApiVersionsResponse::default()).unwrap();
        // length, correlation id, then error code 35 (v0: no tagged fields in header)
        assert_eq!(&frame[4..8], &7i32.to_be_bytes());
        assert_eq!(&frame[8..10], &35i16.to_be_bytes());
    }
}
