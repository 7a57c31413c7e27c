//! The whole request path of a real in-process broker: frame → envelope → guard → decode →
//! handler → encoded response. One broker (one-voter metadata quorum on a temporary
//! directory, in-memory object store) serves every input, as one long-lived node serves
//! many clients; the first two bytes pick an advertised (api, version) as in
//! `request_decode`. Nothing may panic, abort or grow memory beyond the RSS limit; a
//! response, when there is one, must carry the request's correlation id.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;
use shale_broker::{Broker, BrokerConfig};
use shale_meta::{MetaConfig, MetaNode};
use shale_stream::{StreamConfig, StreamStore};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

struct Node {
    runtime: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    _dir: tempfile::TempDir,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = runtime.block_on(async {
            let meta = MetaNode::start(MetaConfig {
                node_id: 1,
                data_dir: dir.path().join("meta"),
                rpc_addr: "127.0.0.1:0".into(),
                voters: Default::default(),
            })
            .await
            .expect("metadata quorum");
            let streams = StreamStore::start(
                Arc::new(object_store::memory::InMemory::new()),
                meta.catalog(),
                StreamConfig {
                    wal_batch_interval: Duration::from_millis(1),
                    ..StreamConfig::default()
                },
            );
            Broker::start(
                BrokerConfig {
                    offsets_topic_num_partitions: 2,
                    // Fuzzed Metadata requests must not create a topic per input.
                    auto_create_topics: false,
                    group_initial_rebalance_delay: Duration::ZERO,
                    ..BrokerConfig::default()
                },
                meta,
                streams,
            )
            .await
            .expect("broker")
        });
        Node {
            runtime,
            broker,
            _dir: dir,
        }
    })
}

fn versions() -> &'static [(ApiKey, i16)] {
    static ALL: OnceLock<Vec<(ApiKey, i16)>> = OnceLock::new();
    ALL.get_or_init(|| {
        shale_protocol::schema::ADVERTISED
            .iter()
            .flat_map(|&(api, min, max)| {
                let codec = api.valid_versions();
                (min.max(codec.min)..=max.min(codec.max)).map(move |v| (api, v))
            })
            .collect()
    })
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
    let mut frame = rest.to_vec();
    if let Some(prefix) = frame.get_mut(..4) {
        prefix[..2].copy_from_slice(&(api as i16).to_be_bytes());
        prefix[2..].copy_from_slice(&version.to_be_bytes());
    }
    let correlation = frame.get(4..8).map(|c| [c[0], c[1], c[2], c[3]]);
    let node = node();
    // Long-polls and group joins are cut short: the input is judged by what it makes the
    // broker do, not by how long a well-formed request may wait.
    let response = node
        .runtime
        .block_on(node.broker.handle_frame(Bytes::from(frame), Duration::from_millis(20)));
    if let (Some(r), Some(c)) = (response, correlation) {
        assert!(r.len() >= 8, "a response frame holds at least its length and correlation id");
        assert_eq!(r[4..8], c, "{api:?} v{version}: response to another request");
    }
});
