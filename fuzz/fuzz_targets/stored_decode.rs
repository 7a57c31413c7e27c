//! What the broker reads back from storage for transactions: `__transaction_state` records,
//! producer-state snapshots, transaction markers and `__consumer_offsets` batches with
//! transactional offsets. Stored bytes are hostile input too (a damaged object, another
//! writer): no panic, no allocation the input does not back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shale_broker::txn::fuzz_stored_decoders(data);
});
