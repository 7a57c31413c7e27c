//! Kafka API handlers, one API family per module.

pub mod cluster;
pub mod configs;
pub mod fetch;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod topics;
