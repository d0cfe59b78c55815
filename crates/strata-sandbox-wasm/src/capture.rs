//! stdout and stderr of one call, kept in memory up to a cap.
//!
//! wasmtime-wasi's `MemoryOutputPipe` traps the guest when it writes past its capacity; a
//! function that logs too much should lose log lines, not its response. This one keeps the
//! first `cap` bytes and counts the rest.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Debug, Default)]
struct Buf {
    bytes: Vec<u8>,
    dropped: u64,
}

/// A capped in-memory sink for one output stream.
#[derive(Debug, Clone)]
pub struct Capture {
    buf: Arc<Mutex<Buf>>,
    cap: usize,
}

impl Capture {
    /// A sink keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Capture {
            buf: Arc::default(),
            cap,
        }
    }

    fn push(&self, data: &[u8]) {
        let mut b = self.buf.lock().expect("capture lock");
        let room = self.cap.saturating_sub(b.bytes.len());
        let keep = room.min(data.len());
        b.bytes.extend_from_slice(&data[..keep]);
        b.dropped += (data.len() - keep) as u64;
    }

    /// What was written, and how many bytes did not fit.
    pub fn take(&self) -> (Bytes, u64) {
        let mut b = self.buf.lock().expect("capture lock");
        let dropped = b.dropped;
        (Bytes::from(std::mem::take(&mut b.bytes)), dropped)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_cap_bytes_and_counts_the_rest() {
        let mut c = Capture::new(5);
        OutputStream::write(&mut c, Bytes::from_static(b"abc")).unwrap();
        OutputStream::write(&mut c, Bytes::from_static(b"defgh")).unwrap();
        let (bytes, dropped) = c.take();
        assert_eq!(&bytes[..], b"abcde");
        assert_eq!(dropped, 3);
    }
}
