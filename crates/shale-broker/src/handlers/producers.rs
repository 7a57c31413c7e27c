//! InitProducerId: producer ids and epochs for idempotent and transactional producers.
//!
//! Without a transactional id (an idempotent producer), every call is answered with a fresh
//! producer id at epoch 0, as Kafka does: the client asks again after UNKNOWN_PRODUCER_ID or
//! an out-of-order sequence, and a new id resets every partition's sequence. Ids come from
//! the block this node leased from the metadata quorum: no Raft write per producer. With a
//! transactional id, the transaction coordinator of that id answers (`crate::txn`).

use crate::Broker;
use crate::txn::coordinator::{ProducerIdAndEpoch, TxnApi};
use crate::txn::glue;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use std::sync::Arc;

pub async fn init_producer_id(
    broker: &Arc<Broker>,
    version: i16,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let fail = |code: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    // Kafka: an id and an epoch come together (KIP-360's recovery), or neither.
    if (req.producer_id.0 == -1) != (req.producer_epoch == -1) {
        return fail(ResponseError::InvalidRequest);
    }
    match req.transactional_id {
        None => match broker.producer_ids.next(&broker.meta).await {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot lease producer ids");
                fail(ResponseError::CoordinatorNotAvailable)
            }
        },
        Some(id) if id.is_empty() => fail(ResponseError::InvalidRequest),
        Some(id) => {
            let expected = ProducerIdAndEpoch::from_request(req.producer_id.0, req.producer_epoch);
            let r = match expected {
                Ok(expected) => {
                    glue::init_producer_id(
                        broker,
                        id.0.to_string(),
                        req.transaction_timeout_ms,
                        expected,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(p) => InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(p.producer_id))
                    .with_producer_epoch(p.epoch),
                Err(e) => fail(e.for_api(TxnApi::InitProducerId, version)),
            }
        }
    }
}
