//! Node-to-node metadata RPC frames (Raft AppendEntries/Vote/snapshots, forwarded writes,
//! read barriers): a peer's bytes are untrusted until mTLS pins who sent them, and even
//! then a bug must not crash the receiver. No panic, no allocation the input does not back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shale_meta::fuzz_rpc_decode(data);
});
