//! The schema tables are checked against the codec they describe: random valid encodings
//! generated from our tables must decode with `kafka-protocol` to the last byte, encode back
//! to the same bytes, and pass the guard. A table that misses, adds or mistypes a field, or
//! gets a version boundary or a tag wrong, makes one of these fail.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use shale_protocol::guard::check_request;
use shale_protocol::schema::{self, Field, Ty};

const SEEDS: u64 = 300;

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes a length or count: -1 is null.
fn put_len(out: &mut Vec<u8>, len: i64, flexible: bool, classic_width: usize) {
    if flexible {
        put_uvarint(out, (len + 1) as u32);
    } else if classic_width == 2 {
        out.extend_from_slice(&(len as i16).to_be_bytes());
    } else {
        out.extend_from_slice(&(len as i32).to_be_bytes());
    }
}

struct Gen {
    rng: Rng,
    version: i16,
    flexible: bool,
}

impl Gen {
    fn structure(&mut self, out: &mut Vec<u8>, fields: &'static [Field], depth: u32) {
        for field in fields {
            if field.tag.is_none() && field.present_in(self.version) {
                let nullable = field.nullable_in(self.version);
                self.value(out, &field.ty, nullable, false, depth);
            }
        }
        if self.flexible {
            self.tags(out, fields, depth);
        }
    }

    /// Known tags sometimes present, then sometimes an unknown one above them, ascending
    /// (the codec re-encodes unknown tags after the known ones).
    fn tags(&mut self, out: &mut Vec<u8>, fields: &'static [Field], depth: u32) {
        let mut entries: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut known: Vec<&Field> = fields
            .iter()
            .filter(|f| f.tag.is_some() && f.present_in(self.version))
            .collect();
        known.sort_by_key(|f| f.tag);
        for field in &known {
            if self.rng.chance(2) {
                let mut value = Vec::new();
                // A tagged value equal to its default is not re-encoded, so never null.
                self.value(&mut value, &field.ty, false, true, depth);
                entries.push((field.tag.unwrap_or(0), value));
            }
        }
        if self.rng.chance(4) {
            let above = fields
                .iter()
                .filter_map(|f| f.tag)
                .max()
                .map_or(0, |t| t + 1);
            let tag = above + self.rng.below(5) as u32;
            let len = self.rng.below(4) as usize;
            entries.push((tag, self.rng.bytes(len)));
        }
        put_uvarint(out, entries.len() as u32);
        for (tag, value) in entries {
            put_uvarint(out, tag);
            put_uvarint(out, value.len() as u32);
            out.extend_from_slice(&value);
        }
    }

    fn value(
        &mut self,
        out: &mut Vec<u8>,
        ty: &'static Ty,
        nullable: bool,
        tagged: bool,
        depth: u32,
    ) {
        let flexible = self.flexible;
        match ty {
            Ty::Bool => out.push(self.rng.below(2) as u8),
            Ty::I8 => out.push(self.rng.next() as u8),
            Ty::I16 => out.extend_from_slice(&(self.rng.next() as i16).to_be_bytes()),
            Ty::I32 => out.extend_from_slice(&(self.rng.next() as i32).to_be_bytes()),
            Ty::I64 => out.extend_from_slice(&(self.rng.next() as i64).to_be_bytes()),
            Ty::F64 => out.extend_from_slice(&self.rng.next().to_be_bytes()),
            Ty::Uuid => {
                let mut id = self.rng.bytes(16);
                if let Some(b) = id.first_mut() {
                    *b |= 1; // never the nil default
                }
                out.extend_from_slice(&id);
            }
            Ty::Str => {
                if nullable && self.rng.chance(4) {
                    put_len(out, -1, flexible, 2);
                } else {
                    let len = self.rng.below(8) + u64::from(tagged);
                    put_len(out, len as i64, flexible, 2);
                    for _ in 0..len {
                        out.push(b'a' + self.rng.below(26) as u8);
                    }
                }
            }
            Ty::Bytes | Ty::Records => {
                if nullable && self.rng.chance(4) {
                    put_len(out, -1, flexible, 4);
                } else {
                    let len = self.rng.below(12) as usize;
                    put_len(out, len as i64, flexible, 4);
                    let data = self.rng.bytes(len);
                    out.extend_from_slice(&data);
                }
            }
            Ty::Array(element) => {
                if nullable && self.rng.chance(4) {
                    put_len(out, -1, flexible, 4);
                } else {
                    let count = if depth >= 3 { 0 } else { self.rng.below(4) };
                    put_len(out, count as i64, flexible, 4);
                    for _ in 0..count {
                        self.value(out, element, false, false, depth + 1);
                    }
                }
            }
            Ty::Struct(fields) => self.structure(out, fields, depth + 1),
        }
    }
}

/// A request header of the version `api` uses at `version`, with a random client id.
fn header(rng: &mut Rng, api: ApiKey, version: i16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(api as i16).to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(rng.next() as i32).to_be_bytes());
    let header_version = api.request_header_version(version);
    if header_version >= 1 {
        if rng.chance(4) {
            out.extend_from_slice(&(-1i16).to_be_bytes());
        } else {
            let len = rng.below(6) as usize;
            out.extend_from_slice(&(len as i16).to_be_bytes());
            out.extend(std::iter::repeat_n(b'c', len));
        }
    }
    if header_version >= 2 {
        out.push(0);
    }
    out
}

/// Every API key the codec knows.
fn api_keys() -> impl Iterator<Item = ApiKey> {
    (0..=i16::MAX).filter_map(|key| ApiKey::try_from(key).ok())
}

/// Every version of every table (the codec's versions the table describes), whether or not
/// Shale advertises the API yet, so a table is right before its API is served or its
/// advertised range is widened. The advertised ranges are within these
/// (`every_advertised_api_version_has_a_schema` in the guard's tests).
fn described_versions() -> impl Iterator<Item = (ApiKey, i16)> {
    api_keys().flat_map(|api| {
        let codec = api.valid_versions();
        let table = schema::request(api).map_or(schema::Versions::NONE, |m| m.versions);
        (table.min.max(codec.min)..=table.max.min(codec.max)).map(move |v| (api, v))
    })
}

fn generate(api: ApiKey, version: i16, seed: u64) -> (Vec<u8>, usize) {
    let message = schema::request(api).expect("described_versions lists only APIs with a schema");
    let mut rng = Rng(seed ^ ((api as u64) << 32) ^ ((version as u64) << 48));
    let mut frame = header(&mut rng, api, version);
    let header_len = frame.len();
    let mut generator = Gen {
        rng,
        version,
        flexible: message.is_flexible(version),
    };
    generator.structure(&mut frame, message.fields, 0);
    (frame, header_len)
}

#[test]
fn generated_requests_decode_fully_and_re_encode_to_the_same_bytes() {
    let mut checked = 0u64;
    for (api, version) in described_versions() {
        for seed in 0..SEEDS {
            let (frame, header_len) = generate(api, version, seed);
            let context = format!("{api:?} v{version} seed {seed}: {frame:02x?}");
            let mut buf = Bytes::from(frame.clone());
            let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
                .unwrap_or_else(|e| panic!("header: {e} in {context}"));
            assert_eq!(
                frame.len() - buf.len(),
                header_len,
                "header length in {context}"
            );
            let body = RequestKind::decode(api, &mut buf, version)
                .unwrap_or_else(|e| panic!("body: {e} in {context}"));
            assert!(buf.is_empty(), "{} bytes left over in {context}", buf.len());
            let mut again = BytesMut::new();
            header
                .encode(&mut again, api.request_header_version(version))
                .unwrap_or_else(|e| panic!("re-encoding header: {e} in {context}"));
            body.encode(&mut again, version)
                .unwrap_or_else(|e| panic!("re-encoding body: {e} in {context}"));
            assert_eq!(&again[..], &frame[..], "re-encoding differs in {context}");
            checked += 1;
        }
    }
    assert!(checked > 100 * SEEDS);
}

#[test]
fn the_guard_accepts_every_generated_request() {
    for (api, version) in described_versions() {
        for seed in 0..SEEDS {
            let (frame, _) = generate(api, version, seed);
            if let Err(e) = check_request(&frame, api, version) {
                panic!("{api:?} v{version} seed {seed}: {e}: {frame:02x?}");
            }
        }
    }
}

#[test]
fn the_guard_refuses_every_truncation_of_a_generated_request() {
    for (api, version) in described_versions() {
        for seed in 0..10 {
            let (frame, _) = generate(api, version, seed);
            for cut in 0..frame.len() {
                assert!(
                    check_request(&frame[..cut], api, version).is_err(),
                    "{api:?} v{version} seed {seed} cut at {cut}"
                );
            }
        }
    }
}

#[test]
fn generated_consumer_subscriptions_round_trip_and_pass_the_guard() {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    let message = &schema::consumer_protocol_subscription::MESSAGE;
    for version in 0..=3 {
        for seed in 0..SEEDS {
            let mut generator = Gen {
                rng: Rng(seed ^ 0xc0de ^ ((version as u64) << 40)),
                version,
                flexible: false,
            };
            let mut body = Vec::new();
            generator.structure(&mut body, message.fields, 0);
            let context = format!("v{version} seed {seed}: {body:02x?}");
            let mut buf = Bytes::from(body.clone());
            let decoded = ConsumerProtocolSubscription::decode(&mut buf, version)
                .unwrap_or_else(|e| panic!("{e} in {context}"));
            assert!(buf.is_empty(), "bytes left over in {context}");
            let mut again = BytesMut::new();
            decoded.encode(&mut again, version).unwrap();
            assert_eq!(&again[..], &body[..], "re-encoding differs in {context}");
            assert_eq!(
                shale_protocol::guard::check_consumer_subscription(&body, version),
                Ok(()),
                "{context}"
            );
        }
    }
}

#[test]
fn the_guard_accepts_a_real_small_request_encoded_by_kafka_protocol() {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
    use kafka_protocol::protocol::StrBytes;
    for version in 0..=12 {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(version)
            .with_client_id(Some(StrBytes::from_static_str("client")))
            .encode(&mut buf, ApiKey::Metadata.request_header_version(version))
            .unwrap();
        let topic = MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))));
        MetadataRequest::default()
            .with_topics(Some(vec![topic]))
            .with_allow_auto_topic_creation(true)
            .encode(&mut buf, version)
            .unwrap();
        assert_eq!(
            check_request(&buf, ApiKey::Metadata, version),
            Ok(()),
            "v{version}"
        );
    }
}
