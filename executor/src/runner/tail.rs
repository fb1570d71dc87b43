//! Bounded capture of a child's output: keep only the last N bytes.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Read `reader` to its end, keeping the last `max` bytes, as text.
///
/// When bytes were dropped, a cut UTF-8 sequence at the front is skipped so
/// the tail starts on a character boundary.
pub async fn read_tail<R: AsyncRead + Unpin>(mut reader: R, max: usize) -> String {
    let mut kept: Vec<u8> = Vec::with_capacity(max.min(64 * 1024));
    let mut buf = vec![0u8; 8192];
    let mut dropped = false;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > max {
                    let excess = kept.len() - max;
                    kept.drain(..excess);
                    dropped = true;
                }
            }
        }
    }
    let start = if dropped {
        kept.iter()
            .position(|b| (b & 0xC0) != 0x80)
            .unwrap_or(kept.len())
    } else {
        0
    };
    String::from_utf8_lossy(&kept[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_last_bytes_on_a_char_boundary() {
        assert_eq!(read_tail(&b"hello"[..], 10).await, "hello");
        assert_eq!(read_tail(&b"hello world"[..], 5).await, "world");
        // "é" is two bytes; cutting through it drops the orphan byte.
        let s = "aé b".as_bytes();
        assert_eq!(read_tail(s, 3).await, " b");
        let big = vec![b'x'; 100_000];
        assert_eq!(read_tail(&big[..], 1000).await.len(), 1000);
    }
}
