//! Small durable-file helpers: atomic replace, directory fsync, checksummed records.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub(crate) fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Makes creations, renames and deletions of directory entries durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `parts` concatenated: written to a temp file, fsynced, renamed over
/// `path`, then the directory is fsynced. A crash leaves either the old or the new content.
pub(crate) fn write_atomic(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    {
        let mut f = File::create(tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()?;
    }
    fs::rename(tmp, path)?;
    sync_dir(dir)
}

/// Writes a small value as `crc32c (LE u32) | json`, atomically.
pub(crate) fn write_checked_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let json = serde_json::to_vec(value)?;
    let crc = crc32c::crc32c(&json).to_le_bytes();
    write_atomic(path, &[&crc, &json])
}

/// Reads a value written by [`write_checked_json`]; `None` if the file does not exist.
pub(crate) fn read_checked_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < 4 {
        return Err(invalid_data(format!("{}: too short", path.display())));
    }
    let (crc, json) = bytes.split_at(4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(json) != crc {
        return Err(invalid_data(format!(
            "{}: checksum mismatch",
            path.display()
        )));
    }
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| invalid_data(format!("{}: {e}", path.display())))
}

/// Log frame: `len (LE u32) | crc32c(len bytes ++ payload) (LE u32) | payload`.
/// The crc covers the length so a zero-filled tail never parses as a valid empty frame.
pub(crate) const FRAME_HEADER: usize = 8;
/// Upper bound on a frame payload; larger lengths are treated as a torn/corrupt header.
pub(crate) const MAX_FRAME: usize = 256 << 20;

fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

pub(crate) fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&frame_crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Result of decoding one frame at the start of a buffer.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// A valid frame and the payload.
    Ok(&'a [u8]),
    /// The buffer is exhausted exactly at a frame boundary.
    End,
    /// Incomplete or corrupt frame (a torn write); the reason.
    Torn(String),
}

pub(crate) fn decode_frame(buf: &[u8]) -> Frame<'_> {
    if buf.is_empty() {
        return Frame::End;
    }
    if buf.len() < FRAME_HEADER {
        return Frame::Torn(format!(
            "{} bytes left, shorter than a frame header",
            buf.len()
        ));
    }
    let len_bytes = [buf[0], buf[1], buf[2], buf[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_FRAME {
        return Frame::Torn(format!("frame length {len} exceeds the maximum"));
    }
    if buf.len() - FRAME_HEADER < len {
        return Frame::Torn(format!(
            "frame of {len} bytes but only {} left",
            buf.len() - FRAME_HEADER
        ));
    }
    let payload = &buf[FRAME_HEADER..FRAME_HEADER + len];
    if frame_crc(len_bytes, payload) != crc {
        return Frame::Torn("frame checksum mismatch".to_string());
    }
    Frame::Ok(payload)
}

/// Checks a frame read back from a known position.
pub(crate) fn check_frame(buf: &[u8]) -> io::Result<&[u8]> {
    match decode_frame(buf) {
        Frame::Ok(p) if p.len() + FRAME_HEADER == buf.len() => Ok(p),
        Frame::Ok(_) => Err(invalid_data("frame length does not match the index")),
        Frame::End => Err(invalid_data("empty frame")),
        Frame::Torn(why) => Err(invalid_data(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_detect_damage() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, b"hello");
        encode_frame(&mut buf, b"");
        let Frame::Ok(p) = decode_frame(&buf) else {
            panic!("first frame")
        };
        assert_eq!(p, b"hello");
        let Frame::Ok(p) = decode_frame(&buf[FRAME_HEADER + 5..]) else {
            panic!("second frame")
        };
        assert!(p.is_empty());
        assert!(matches!(decode_frame(&buf[buf.len()..]), Frame::End));
        assert!(matches!(decode_frame(&buf[..6]), Frame::Torn(_)));
        assert!(matches!(decode_frame(&buf[..10]), Frame::Torn(_)));
        assert!(matches!(decode_frame(&[0u8; 16]), Frame::Torn(_)));
        let mut bad = buf.clone();
        bad[9] ^= 1;
        assert!(matches!(decode_frame(&bad), Frame::Torn(_)));
    }

    #[test]
    fn checked_json_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        assert_eq!(read_checked_json::<u64>(&p).unwrap(), None);
        write_checked_json(&p, &42u64).unwrap();
        assert_eq!(read_checked_json::<u64>(&p).unwrap(), Some(42));
        let mut bytes = fs::read(&p).unwrap();
        bytes[5] ^= 0xff;
        fs::write(&p, bytes).unwrap();
        assert!(read_checked_json::<u64>(&p).is_err());
    }
}
