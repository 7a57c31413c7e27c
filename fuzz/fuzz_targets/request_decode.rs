//! Request frames: the first two bytes pick an advertised (api, version), the rest is the
//! frame (its api key and version overwritten to match, as the broker's dispatch would have
//! checked them). Checks that nothing panics or over-allocates, and that the guard and the
//! codec agree: a frame the guard accepts must decode. The same bytes are also tried as a
//! consumer-protocol subscription (JoinGroup metadata).
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;
use shale_protocol::{envelope, guard, schema};
use std::sync::OnceLock;

fn versions() -> &'static [(ApiKey, i16)] {
    static ALL: OnceLock<Vec<(ApiKey, i16)>> = OnceLock::new();
    ALL.get_or_init(|| {
        schema::ADVERTISED
            .iter()
            .flat_map(|&(api, min, max)| {
                let codec = api.valid_versions();
                (min.max(codec.min)..=max.min(codec.max)).map(move |v| (api, v))
            })
            .collect()
    })
}

/// JoinGroup's protocol metadata, decoded by the group coordinator: the same agreement
/// between guard and codec must hold.
fn subscription(selector: u8, body: &[u8]) {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let version = i16::from(selector % 4);
    if guard::check_consumer_subscription(body, version).is_ok() {
        let mut buf = Bytes::copy_from_slice(body);
        if let Err(e) = ConsumerProtocolSubscription::decode(&mut buf, version) {
            panic!("guard accepted a v{version} subscription the codec refused: {e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let all = versions();
    let Some(&(api, version)) = all.get(usize::from(u16::from_be_bytes(*selector)) % all.len())
    else {
        return;
    };
    subscription(selector[0], rest);
    let mut frame = rest.to_vec();
    if let Some(prefix) = frame.get_mut(..4) {
        prefix[..2].copy_from_slice(&(api as i16).to_be_bytes());
        prefix[2..].copy_from_slice(&version.to_be_bytes());
    }
    if let Ok(peek) = envelope::peek(&frame) {
        assert_eq!((peek.api_key, peek.api_version), (api as i16, version));
    }
    let guarded = guard::check_request(&frame, api, version);
    let decoded = envelope::decode_request(Bytes::from(frame), api, version);
    match (&guarded, &decoded) {
        (Ok(()), Err(e)) => panic!("guard accepted {api:?} v{version} but the codec failed: {e}"),
        (Err(_), Ok(_)) => panic!("decode_request accepted what the guard refused"),
        _ => {}
    }
});
