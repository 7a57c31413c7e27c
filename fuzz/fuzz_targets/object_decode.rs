//! Stream objects (WAL and compacted): footer, index and block decoding. The input is tried
//! as a whole object, and again with a valid footer (index CRC included) and block CRCs
//! computed, so the fuzzer reaches the index and entry parsing behind the checksums.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shale_stream::object::{self, FOOTER_LEN, FORMAT_VERSION, MAGIC};

fn exercise(object: &Bytes, fix_block_crcs: bool) {
    let _ = object::decode_footer(object);
    let Ok(index) = object::decode_index_full(object) else {
        return;
    };
    for entry in index {
        let mut range = entry.range;
        if fix_block_crcs {
            let block = usize::try_from(range.position)
                .ok()
                .and_then(|start| object.get(start..start.checked_add(range.length as usize)?));
            if let Some(block) = block {
                range.crc = crc32c::crc32c(block);
            }
        }
        if let Ok(records) = object::decode_range(object, &range) {
            let total: usize = records.iter().map(|r| r.payload.len()).sum();
            assert!(total <= object.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(&Bytes::copy_from_slice(data), false);
    // The last two input bytes say how long the index is; everything before is blocks and
    // index, and a correct footer is appended.
    let Some((body, len)) = data.split_last_chunk::<2>() else {
        return;
    };
    let index_len = usize::from(u16::from_be_bytes(*len)).min(body.len());
    let index_at = body.len() - index_len;
    let mut whole = body.to_vec();
    whole.extend_from_slice(&(index_at as u64).to_be_bytes());
    whole.extend_from_slice(&(index_len as u32).to_be_bytes());
    whole.extend_from_slice(&crc32c::crc32c(&body[index_at..]).to_be_bytes());
    whole.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    whole.extend_from_slice(&0u16.to_be_bytes());
    whole.extend_from_slice(&MAGIC);
    debug_assert_eq!(whole.len(), body.len() + FOOTER_LEN);
    exercise(&Bytes::from(whole), true);
});
