//! Record batches as a producer sends them or as they come back from storage: header
//! validation, capped decompression, record walking and the safe decoder. The input is
//! tried as is and with every batch CRC fixed up, so the fuzzer gets past the CRC check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shale_protocol::batch::{self, HEADER_LEN, LOG_OVERHEAD};
use shale_protocol::records;

/// Small enough that the fuzzer's RSS limit is never the thing that stops a bomb.
const CAP: usize = 1 << 20;

fn exercise(data: &[u8]) {
    if let Ok(batches) = batch::validate_batches(data) {
        for (h, range) in batches {
            let Some(one) = data.get(range) else { continue };
            if let Ok(section) = records::records_section_capped(one, &h, CAP) {
                assert!(section.len() <= CAP);
                let checked = records::check_records(&section, h.record_count);
                let parsed = records::parse_records(&section, h.record_count);
                if checked.is_ok() {
                    assert!(
                        parsed.is_ok(),
                        "check_records accepted what parse_records refused"
                    );
                }
            }
        }
    }
    let _ = batch::headers(data).count();
    let _ = records::decode_batches_capped(data, CAP);
}

/// Recomputes each batch's CRC where its length fits in the input.
fn fix_crcs(data: &mut [u8]) {
    let mut pos = 0usize;
    while let Some(rest) = data.get(pos..) {
        let Ok(h) = batch::BatchHeader::parse(rest) else {
            return;
        };
        let len = h.total_len();
        if len < HEADER_LEN || len > rest.len() {
            return;
        }
        let crc = crc32c::crc32c(data.get(pos + 21..pos + len).unwrap_or_default());
        if let Some(field) = data.get_mut(pos + 17..pos + 21) {
            field.copy_from_slice(&crc.to_be_bytes());
        }
        pos += len.max(LOG_OVERHEAD);
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut fixed = data.to_vec();
    fix_crcs(&mut fixed);
    exercise(&fixed);
});
