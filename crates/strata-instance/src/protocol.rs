//! The instance protocol (docs/protocol.md): frames of a JSON header and a binary body over
//! the control socket (fd 3 in the sandbox).

use bytes::Bytes;
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

/// Read one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(FromInstance, Bytes)>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let hlen = u32::from_be_bytes(len) as usize;
    if hlen > MAX_HEADER {
        return Err(invalid(format!("frame header of {hlen} bytes exceeds {MAX_HEADER}")));
    }
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h).await?;
    r.read_exact(&mut len).await?;
    let blen = u32::from_be_bytes(len) as usize;
    if blen > MAX_BODY {
        return Err(invalid(format!("frame body of {blen} bytes exceeds {MAX_BODY}")));
    }
    let mut body = vec![0u8; blen];
    r.read_exact(&mut body).await?;
    let header: FromInstance = serde_json::from_slice(&h)
        .map_err(|e| invalid(format!("bad frame header {}: {e}", String::from_utf8_lossy(&h))))?;
    Ok(Some((header, Bytes::from(body))))
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
        let mut r = buf.as_slice();
        let (head, body) = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(
            head,
            FromInstance::Response {
                id: "c1".into(),
                status: 201,
                headers: vec![("a".into(), "b".into())]
            }
        );
        assert_eq!(&body[..], &[0, 255, 7]);
        assert!(read_frame(&mut r).await.unwrap().is_none());

        let mut bad = Vec::new();
        bad.extend_from_slice(&(u32::MAX).to_be_bytes());
        assert!(read_frame(&mut bad.as_slice()).await.is_err());
        let mut bad = Vec::new();
        bad.extend_from_slice(&2u32.to_be_bytes());
        bad.extend_from_slice(b"{}");
        bad.extend_from_slice(&0u32.to_be_bytes());
        assert!(read_frame(&mut bad.as_slice()).await.is_err());
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
