//! Kafka API handlers, one API family per module.

pub mod acls;
pub mod cluster;
pub mod configs;
pub mod credentials;
pub mod fetch;
pub mod groups;
pub mod metadata;
pub mod offset_commit;
pub mod offsets;
pub mod produce;
pub mod producers;
pub mod quotas;
pub mod topics;
pub mod txn;
