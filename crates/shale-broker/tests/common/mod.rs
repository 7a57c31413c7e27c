//! An in-process broker for integration tests: a one-voter metadata quorum on a temporary
//! directory, an in-memory object store and a listener on a free loopback port.

use shale_broker::{Broker, BrokerConfig};
use shale_meta::{MetaConfig, MetaNode};
use shale_stream::{StreamConfig, StreamStore};
use std::sync::Arc;
use std::time::Duration;

/// Starts a broker with `config` (its advertised port is set to the listener's).
pub async fn start_broker(
    dir: &std::path::Path,
    config: BrokerConfig,
) -> (Arc<Broker>, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let meta = MetaNode::start(MetaConfig {
        node_id: 1,
        data_dir: dir.join("meta"),
        rpc_addr: addr.to_string(),
    })
    .await
    .unwrap();
    let streams = StreamStore::start(
        Arc::new(object_store::memory::InMemory::new()),
        meta.catalog(),
        StreamConfig {
            wal_batch_interval: Duration::from_millis(5),
            ..StreamConfig::default()
        },
    );
    let broker = Broker::start(
        BrokerConfig {
            advertised_port: addr.port(),
            ..config
        },
        meta,
        streams,
    )
    .await
    .unwrap();
    let b = broker.clone();
    tokio::spawn(async move { b.serve(listener).await });
    (broker, addr)
}
