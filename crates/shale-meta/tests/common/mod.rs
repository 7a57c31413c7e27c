//! Helpers shared by the integration tests.
#![allow(dead_code)]

use shale_meta::{MetaConfig, MetaNode, MetaOptions, TopicCommand};
use shale_stream::{ObjectMeta, ObjectRange, StreamId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn config(dir: &Path) -> MetaConfig {
    MetaConfig {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        rpc_addr: "127.0.0.1:0".to_string(),
        voters: Default::default(),
    }
}

pub async fn start(dir: &Path) -> Arc<MetaNode> {
    MetaNode::start(config(dir)).await.expect("start meta node")
}

pub async fn start_with(dir: &Path, options: MetaOptions) -> Arc<MetaNode> {
    MetaNode::start_with(config(dir), options)
        .await
        .expect("start meta node")
}

pub fn range(stream_id: StreamId, start: u64, end: u64) -> ObjectRange {
    ObjectRange {
        stream_id,
        start_offset: start,
        end_offset: end,
        position: start * 100,
        length: ((end - start) * 100) as u32,
        max_timestamp: -1,
        crc: 0,
    }
}

pub fn object(id: u64, ranges: Vec<ObjectRange>) -> ObjectMeta {
    ObjectMeta {
        id,
        key: format!("wal/{id:016}"),
        size: ranges.iter().map(|r| r.length as u64).sum(),
        ranges,
        committed_at_ms: 1_000 + id as i64,
    }
}

pub fn create_topic(name: &str, partitions: u32) -> TopicCommand {
    TopicCommand::CreateTopic {
        name: name.to_string(),
        id: [7; 16],
        partitions,
        configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
        owner: 1,
        placement: shale_meta::Placement::Owner,
        now_ms: 42,
    }
}

pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}
