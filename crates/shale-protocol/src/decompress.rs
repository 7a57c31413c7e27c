//! Decompression of record-batch payloads with a hard cap on the output.
//!
//! `kafka-protocol`'s decompressors inflate until the input ends, so a few kilobytes of
//! gzip or zstd can demand gigabytes (a decompression bomb). Here every codec is read
//! through a streaming reader limited to `cap + 1` bytes: reaching the extra byte means
//! the payload inflates beyond the cap, and decompression stops there with an error.

use std::io::Read;

/// Batch `attributes & 0x07` values.
pub const NONE: u8 = 0;
pub const GZIP: u8 = 1;
pub const SNAPPY: u8 = 2;
pub const LZ4: u8 = 3;
pub const ZSTD: u8 = 4;

/// Why a payload could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("records inflate beyond the cap of {cap} bytes")]
    TooLarge { cap: usize },
    #[error("corrupt {codec} payload: {detail}")]
    Corrupt { codec: &'static str, detail: String },
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
}

/// Decompresses `input` compressed with `codec` (a batch's `attributes & 0x07`), refusing
/// to produce more than `cap` bytes. The broker ties `cap` to `message.max.bytes` (times
/// the compression ratio it is willing to accept); memory used is at most about `cap`.
pub fn decompress_capped(codec: u8, input: &[u8], cap: usize) -> Result<Vec<u8>, DecompressError> {
    match codec {
        NONE => {
            if input.len() > cap {
                return Err(DecompressError::TooLarge { cap });
            }
            Ok(input.to_vec())
        }
        // Multi-member, as Java's GZIPInputStream reads concatenated gzip streams.
        GZIP => read_capped("gzip", flate2::read::MultiGzDecoder::new(input), cap),
        SNAPPY => snappy(input, cap),
        LZ4 => {
            let decoder = lz4::Decoder::new(input).map_err(|e| corrupt("lz4", e))?;
            read_capped("lz4", decoder, cap)
        }
        ZSTD => {
            let decoder =
                zstd::stream::read::Decoder::new(input).map_err(|e| corrupt("zstd", e))?;
            read_capped("zstd", decoder, cap)
        }
        other => Err(DecompressError::UnknownCodec(other)),
    }
}

fn corrupt(codec: &'static str, e: impl std::fmt::Display) -> DecompressError {
    DecompressError::Corrupt {
        codec,
        detail: e.to_string(),
    }
}

fn read_capped(
    codec: &'static str,
    reader: impl Read,
    cap: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() > cap {
        return Err(DecompressError::TooLarge { cap });
    }
    Ok(out)
}

/// snappy-java's framing, which Kafka producers use: magic, two version words, then
/// blocks of `int32 length` + raw snappy. Without the magic the payload is one raw block
/// (as snappy-java falls back to). Each block's declared size is checked against the cap
/// before anything is allocated for it.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;

fn snappy(input: &[u8], cap: usize) -> Result<Vec<u8>, DecompressError> {
    if input.is_empty() {
        return Err(corrupt("snappy", "empty payload"));
    }
    let mut out = Vec::new();
    if input.get(..XERIAL_MAGIC.len()) != Some(&XERIAL_MAGIC[..]) {
        snappy_block(input, &mut out, cap)?;
        return Ok(out);
    }
    let mut rest = input
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| corrupt("snappy", "truncated stream header"))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("snappy", "truncated block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = tail
            .get(..len)
            .ok_or_else(|| corrupt("snappy", "block longer than the payload"))?;
        snappy_block(block, &mut out, cap)?;
        rest = tail.get(len..).unwrap_or_default();
    }
    Ok(out)
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>, cap: usize) -> Result<(), DecompressError> {
    let len = snap::raw::decompress_len(block).map_err(|e| corrupt("snappy", e))?;
    let start = out.len();
    let end = start
        .checked_add(len)
        .filter(|&end| end <= cap)
        .ok_or(DecompressError::TooLarge { cap })?;
    out.resize(end, 0);
    let target = out.get_mut(start..).unwrap_or_default();
    snap::raw::Decoder::new()
        .decompress(block, target)
        .map_err(|e| corrupt("snappy", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::compression::{self as cmpr, Compressor};

    /// `n` zero bytes compressed by kafka-protocol's own compressor for `codec`, i.e. what
    /// a producer would send.
    fn compressed_zeros(codec: u8, n: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        let write = |buf: &mut BytesMut| {
            buf.extend_from_slice(&vec![0u8; n]);
            Ok(())
        };
        match codec {
            GZIP => cmpr::Gzip::compress(&mut out, write),
            SNAPPY => cmpr::Snappy::compress(&mut out, write),
            LZ4 => cmpr::Lz4::compress(&mut out, write),
            ZSTD => cmpr::Zstd::compress(&mut out, write),
            _ => cmpr::None::compress(&mut out, write),
        }
        .unwrap();
        out.to_vec()
    }

    const CODECS: [u8; 5] = [NONE, GZIP, SNAPPY, LZ4, ZSTD];

    #[test]
    fn a_payload_under_the_cap_decompresses_to_its_bytes_in_every_codec() {
        for codec in CODECS {
            let input = compressed_zeros(codec, 10_000);
            assert_eq!(
                decompress_capped(codec, &input, 10_000),
                Ok(vec![0; 10_000]),
                "{codec}"
            );
        }
    }

    #[test]
    fn a_bomb_stops_at_the_cap_in_every_codec() {
        // 16 MiB of zeros compress to a few kilobytes (snappy: well under 1 MiB).
        for codec in CODECS {
            let input = compressed_zeros(codec, 16 << 20);
            assert_eq!(
                decompress_capped(codec, &input, 1 << 20),
                Err(DecompressError::TooLarge { cap: 1 << 20 }),
                "{codec} ({} compressed bytes)",
                input.len()
            );
        }
    }

    #[test]
    fn one_byte_over_the_cap_is_refused() {
        for codec in CODECS {
            let input = compressed_zeros(codec, 1001);
            assert_eq!(
                decompress_capped(codec, &input, 1000),
                Err(DecompressError::TooLarge { cap: 1000 }),
                "{codec}"
            );
        }
    }

    #[test]
    fn a_raw_snappy_block_declaring_4_gib_is_refused_before_allocating() {
        // Raw snappy starts with the uncompressed length as a varint: 0xffffffff here.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert_eq!(
            decompress_capped(SNAPPY, &bomb, 1 << 20),
            Err(DecompressError::TooLarge { cap: 1 << 20 })
        );
    }

    #[test]
    fn garbage_is_an_error_or_bounded_output_in_every_codec() {
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            for len in 0..64usize {
                let junk: Vec<u8> = (0..len).map(|i| (i * 29 + 3) as u8).collect();
                if let Ok(out) = decompress_capped(codec, &junk, 1 << 16) {
                    assert!(out.len() <= 1 << 16);
                }
            }
        }
    }

    #[test]
    fn an_unknown_codec_is_refused() {
        assert_eq!(
            decompress_capped(9, &[], 10),
            Err(DecompressError::UnknownCodec(9))
        );
    }
}
