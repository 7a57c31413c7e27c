//! Kafka wire protocol plumbing for Shale: size-prefixed framing, the request envelope
//! (header decoding with the version range checked *before* the body is decoded), response
//! encoding, and magic-v2 record-batch header validation and patching.
//!
//! Message bodies are the `kafka-protocol` crate's codecs; this crate only adds what that
//! crate leaves to the broker: version checks, a guard that checks request frames against
//! our own schema tables before the codec sizes allocations from them ([`guard`],
//! [`schema`]), batch headers without decompression, and record decoding with capped
//! decompression and counts checked against bytes ([`records`], [`decompress`]).

pub mod batch;
pub mod control;
pub mod decompress;
pub mod envelope;
pub mod fetch_frame;
pub mod frame;
pub mod guard;
pub mod records;
pub mod schema;

pub use kafka_protocol;
pub use kafka_protocol::error::ResponseError;

/// Kafka error code helpers.
pub mod codes {
    use kafka_protocol::error::ResponseError;

    pub const NONE: i16 = 0;

    /// The wire code of an error.
    pub const fn code(e: ResponseError) -> i16 {
        e.code()
    }
}
