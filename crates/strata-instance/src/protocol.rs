//! The instance protocol (docs/protocol.md): frames of a JSON header and a binary body over
//! the control socket (fd 3 in the sandbox).

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest header accepted from an instance: headers are small JSON objects.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest body accepted from an instance (a response body).
pub const MAX_BODY: usize = 64 << 20;

/// platform → instance.
#[derive(Debug, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToInstance<'a> {
    /// Run the handler on a request (the body follows).
    Invoke {
        /// Call id.
        id: &'a str,
        /// HTTP method.
        method: &'a str,
        /// Path after the function name, "/" at least.
        path: &'a str,
        /// Raw query string without '?'.
        query: &'a str,
        /// Lowercase names, in order, repeated names repeated.
        headers: &'a [(String, String)],
    },
    /// Exit now.
    Shutdown,
}

/// instance → platform.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum FromInstance {
    /// The handler is loaded.
    Ready {
        /// How long loading the handler took, ms.
        #[serde(default)]
        import_ms: Option<f64>,
    },
    /// Loading the handler failed; the instance exits.
    InitError {
        /// What went wrong.
        message: String,
    },
    /// A call's response (the body follows).
    Response {
        /// Call id.
        id: String,
        /// HTTP status.
        status: u16,
        /// Response headers.
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// The handler failed on a call; the instance lives on.
    Error {
        /// Call id.
        id: String,
        /// Error text (traceback).
        message: String,
    },
    /// A line the handler printed during a call.
    Log {
        /// Call id.
        #[serde(default)]
        id: Option<String>,
        /// "stdout" or "stderr".
        stream: String,
        /// The line.
        line: String,
    },
}

/// Encode one frame.
pub fn encode(header: &ToInstance<'_>, body: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("protocol headers always serialise");
    let mut out = Vec::with_capacity(8 + h.len() + body.len());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: &ToInstance<'_>,
    body: &[u8],
) -> std::io::Result<()> {
    w.write_all(&encode(header, body)).await
}

/// Frames read from a stream so that a read dropped part-way loses nothing: the bytes read so
/// far stay here for the next read (the caller that reads is whichever call on the instance
/// is waiting, and a call whose client goes away is dropped mid-read).
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames from `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 << 10),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream (between frames). Cancel-safe.
    pub async fn next(&mut self) -> std::io::Result<Option<(FromInstance, Bytes)>> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            // `read_buf` appends only what it read, when it read it: dropping it loses nothing.
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the control channel closed in the middle of a frame",
                    ))
                };
            }
        }
    }

    /// A whole frame from the bytes read so far, or `None` (with room reserved for the rest).
    fn parse(&mut self) -> std::io::Result<Option<(FromInstance, Bytes)>> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let len_at = |b: &[u8], at: usize| {
            b.get(at..at + 4)
                .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        };
        let Some(hlen) = len_at(&self.buf, 0) else {
            self.buf.reserve(4);
            return Ok(None);
        };
        if hlen > MAX_HEADER {
            return Err(invalid(format!("frame header of {hlen} bytes exceeds {MAX_HEADER}")));
        }
        let Some(blen) = len_at(&self.buf, 4 + hlen) else {
            self.buf.reserve(8 + hlen - self.buf.len().min(8 + hlen));
            return Ok(None);
        };
        if blen > MAX_BODY {
            return Err(invalid(format!("frame body of {blen} bytes exceeds {MAX_BODY}")));
        }
        let total = 8 + hlen + blen;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let h = &self.buf[4..4 + hlen];
        let header: FromInstance = serde_json::from_slice(h)
            .map_err(|e| invalid(format!("bad frame header {}: {e}", String::from_utf8_lossy(h))))?;
        // The body copied out, not split off: the buffer stays this reader's alone, so its
        // space is reused for the next frame (a split-off body still held by its caller made
        // the next read allocate a fresh 64 KiB).
        let body = Bytes::copy_from_slice(&self.buf[8 + hlen..total]);
        bytes::Buf::advance(&mut self.buf, total);
        Ok(Some((header, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_an_error() {
        let mut buf = Vec::new();
        let h = br#"{"t":"response","id":"c1","status":201,"headers":[["a","b"]]}"#;
        buf.extend_from_slice(&(h.len() as u32).to_be_bytes());
        buf.extend_from_slice(h);
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(&[0, 255, 7]);
        let mut r = FrameReader::new(buf.as_slice());
        let (head, body) = r.next().await.unwrap().unwrap();
        assert_eq!(
            head,
            FromInstance::Response {
                id: "c1".into(),
                status: 201,
                headers: vec![("a".into(), "b".into())]
            }
        );
        assert_eq!(&body[..], &[0, 255, 7]);
        assert!(r.next().await.unwrap().is_none());

        let mut bad = Vec::new();
        bad.extend_from_slice(&(u32::MAX).to_be_bytes());
        assert!(FrameReader::new(bad.as_slice()).next().await.is_err());
        let mut bad = Vec::new();
        bad.extend_from_slice(&2u32.to_be_bytes());
        bad.extend_from_slice(b"{}");
        bad.extend_from_slice(&0u32.to_be_bytes());
        assert!(FrameReader::new(bad.as_slice()).next().await.is_err());
        // Cut off in the middle of a frame: an error, not a clean end.
        let mut cut = FrameReader::new(&buf[..buf.len() - 1]);
        assert!(cut.next().await.is_err());
    }

    #[tokio::test]
    async fn a_read_dropped_mid_frame_loses_nothing() {
        let mut frame = Vec::new();
        let h = br#"{"t":"response","id":"c1","status":200,"headers":[]}"#;
        frame.extend_from_slice(&(h.len() as u32).to_be_bytes());
        frame.extend_from_slice(h);
        frame.extend_from_slice(&5u32.to_be_bytes());
        frame.extend_from_slice(b"hello");
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(rx);
        // Half the frame arrives, and the read waiting for the rest is dropped.
        tx.write_all(&frame[..20]).await.unwrap();
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(50), r.next()).await;
        assert!(dropped.is_err(), "no whole frame yet");
        // The next read gets the whole frame once the rest arrives.
        tx.write_all(&frame[20..]).await.unwrap();
        let (head, body) = r.next().await.unwrap().unwrap();
        assert!(matches!(head, FromInstance::Response { status: 200, .. }));
        assert_eq!(&body[..], b"hello");
    }

    #[test]
    fn invoke_header_shape() {
        let headers = vec![("x-a".to_string(), "1".to_string())];
        let f = encode(
            &ToInstance::Invoke {
                id: "i",
                method: "GET",
                path: "/",
                query: "a=1",
                headers: &headers,
            },
            b"",
        );
        let hlen = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
        let v: serde_json::Value = serde_json::from_slice(&f[4..4 + hlen]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"t":"invoke","id":"i","method":"GET","path":"/","query":"a=1","headers":[["x-a","1"]]})
        );
    }
}
