//! Request and response plumbing shared by the guests: the `wasi:http` calls every handler
//! makes, in one place.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// The parts of a request a handler looks at.
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query, as received.
    pub path_with_query: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_with_query.split('?').next().unwrap_or("")
    }

    /// The query string, without `?`.
    pub fn query(&self) -> &str {
        self.path_with_query.split_once('?').map_or("", |(_, q)| q)
    }

    /// The value of query parameter `key` (no percent-decoding).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query()
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Read the whole request.
pub fn read(request: IncomingRequest) -> Request {
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Other(m) => m,
    };
    let path_with_query = request.path_with_query().unwrap_or_default();
    let headers = request.headers().entries();
    let body = request.consume().map(read_body).unwrap_or_default();
    Request {
        method,
        path_with_query,
        headers,
        body,
    }
}

/// Read an incoming body to its end.
pub fn read_body(body: IncomingBody) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let Ok(stream) = body.stream() else { return out };
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => break,
            }
        }
    }
    IncomingBody::finish(body);
    out
}

/// Answer with `status`, `headers` and `body`.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        // A header the host refuses is left out rather than failing the response.
        let _ = fields.append(name, value);
    }
    let resp = OutgoingResponse::new(fields);
    let _ = resp.set_status_code(status);
    let outgoing = resp.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(resp));
    {
        let mut stream = outgoing.write().expect("a new body has a stream");
        // `blocking_write_and_flush` takes at most 4096 bytes at a time.
        for chunk in body.chunks(4096) {
            stream.write_all(chunk).expect("write response body");
        }
        stream.flush().expect("flush response body");
    }
    OutgoingBody::finish(outgoing, None).expect("finish response body");
}
