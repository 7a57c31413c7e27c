//! Size-prefixed Kafka frames: `int32 length` followed by `length` bytes.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than `socket.request.max.bytes` (or negative).
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: i64, limit: usize },
    /// The connection closed in the middle of a frame.
    #[error("connection closed inside a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` on a clean close between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated { got, expected: 4 })
            };
        }
        got += n;
    }
    let size = i32::from_be_bytes(len);
    if size < 0 || size as usize > limit {
        return Err(FrameError::TooLarge {
            size: i64::from(size),
            limit,
        });
    }
    let size = size as usize;
    // Read into spare capacity: zeroing a buffer that is about to be overwritten cost more
    // than the CRC check on the produce path. `take` keeps the read inside this frame.
    let mut buf = BytesMut::with_capacity(size);
    let mut body = reader.take(size as u64);
    while buf.len() < size {
        let n = body.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                got: buf.len(),
                expected: size,
            });
        }
    }
    Ok(Some(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_and_detects_truncation_and_oversize() {
        let mut data: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 5, b'x'];
        let f = read_frame(&mut data, 100).await.unwrap().unwrap();
        assert_eq!(&f[..], b"abc");
        assert!(matches!(
            read_frame(&mut data, 100).await,
            Err(FrameError::Truncated {
                got: 1,
                expected: 5
            })
        ));
        let mut big: &[u8] = &[0, 0, 1, 0];
        assert!(matches!(
            read_frame(&mut big, 10).await,
            Err(FrameError::TooLarge { size: 256, .. })
        ));
        let mut neg: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut neg, 10).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 10).await.unwrap().is_none());
        let mut partial_len: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut partial_len, 10).await,
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
    }
}
