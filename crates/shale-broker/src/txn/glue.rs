//! The transaction coordinator's I/O: placement on `__transaction_state`, loading, the log
//! appends and the markers. (Transactions arrive with the coordinator; until then a
//! transactional producer is told it may not use its transactional id.)

use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use std::sync::Arc;

pub(crate) async fn init_transactional(
    _broker: &Arc<Broker>,
    _req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}
