//! `ANY /function/NAME[/path]`: one synchronous invocation.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use strata_instance::Request;
use strata_types::ErrorCode;
use tracing::Instrument;

use crate::{ApiError, AppState};

/// Headers a handler may not set: the platform owns framing and connection management.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// The caller's `X-Call-Id`, or a new one: a UUID v7, time-ordered, so that the store's
/// call-id index grows at its end instead of at random pages (a random v4 id made every
/// record's insert touch another page of a growing tree, and the commits under load slower
/// as the index grew).
pub(crate) fn call_id(headers: &HeaderMap) -> String {
    headers
        .get("x-call-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The function's name and the path after it in `/{route}/{name}[/rest]` (`prefix` is
/// `/{route}/`), read from the raw path: the name percent-decoded (one that does not decode to
/// UTF-8 is kept as sent and matches no function: 404), the rest as sent, "/" when there is
/// none. Not axum's `Path` extractor, which answers a request whose path does not decode with
/// a plain-text 400 before any handler runs (the function never sees it).
pub(crate) fn route(uri: &Uri, prefix: &str) -> (String, String) {
    let after = uri.path().strip_prefix(prefix).unwrap_or("");
    let (segment, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_or_else(|_| segment.to_owned(), |n| n.into_owned());
    let path = if rest.is_empty() {
        "/".to_owned()
    } else {
        rest.to_owned()
    };
    (name, path)
}

/// Read a body up to `limit` bytes; beyond it, 413.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("reading the request body: {e}"),
        )),
    }
}

pub(crate) async fn invoke(State(s): State<AppState>, request: axum::extract::Request) -> Response {
    let t0 = Instant::now();
    // The request taken whole and split: axum's `HeaderMap`, `Uri` and `Method` extractors
    // each clone their part.
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let (name, path) = route(&uri, "/function/");
    let id = call_id(&headers);
    let fail = |e: ApiError, id: &str| {
        ApiError {
            call_id: Some(id.to_owned()),
            ..e
        }
        .into_response()
    };
    if !s.orch.has(&name) {
        return fail(
            ApiError::new(ErrorCode::FunctionNotFound, format!("function {name} not found")),
            &id,
        );
    }
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > s.config.max_body
    {
        s.metrics.observe(&name, 413, t0.elapsed(), false);
        return fail(
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body of {len} bytes exceeds the limit of {} bytes",
                    s.config.max_body
                ),
            ),
            &id,
        );
    }
    let body = match read_body(body, s.config.max_body).await {
        Ok(b) => b,
        Err(e) => {
            s.metrics.observe(&name, e.code.status(), t0.elapsed(), false);
            return fail(e, &id);
        }
    };
    let req = Request {
        id: id.clone(),
        method: method.as_str().to_owned(),
        path,
        query: uri.query().unwrap_or("").to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    // The span covers the whole call, across its awaits (an `enter()` guard held over an
    // await would be wrong; one dropped at once, as this was, covered nothing).
    let span = tracing::debug_span!("invoke", function = %name, call_id = %id);
    let outcome = s.orch.invoke(&name, req).instrument(span).await;
    let elapsed = t0.elapsed();
    let cold = outcome.cold.is_some();
    match outcome.result {
        Ok(r) => {
            s.metrics.observe(&name, r.status, elapsed, cold);
            let mut resp = Response::new(Body::from(r.body));
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let h = resp.headers_mut();
            for (k, v) in &r.headers {
                let lower = k.to_ascii_lowercase();
                if HOP_BY_HOP.contains(&lower.as_str()) {
                    continue;
                }
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_str(v)) {
                    h.append(k, v);
                }
            }
            stamp(h, &id, elapsed.as_secs_f64());
            resp
        }
        Err(e) => {
            let code = e.code();
            s.metrics.observe(&name, code.status(), elapsed, cold);
            let message = match &e {
                strata_orchestrator::Error::Invoke(inner) => format!("call {id}: {} ({inner})", code.as_str()),
                other => format!("call {id}: {other}"),
            };
            let mut resp = fail(ApiError::new(code, message), &id);
            stamp(resp.headers_mut(), &id, elapsed.as_secs_f64());
            resp
        }
    }
}

fn stamp(h: &mut HeaderMap, id: &str, secs: f64) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-call-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{secs:.6}")) {
        h.insert("x-duration-seconds", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_decoded_and_the_rest_kept_as_sent() {
        let r = |p: &str| route(&p.parse::<Uri>().unwrap(), "/function/");
        assert_eq!(r("/function/hello"), ("hello".into(), "/".into()));
        assert_eq!(r("/function/hello/"), ("hello".into(), "/".into()));
        assert_eq!(r("/function/hello/items/1?x=1"), ("hello".into(), "/items/1".into()));
        // The rest is measured in the raw path, not by the decoded name's length.
        assert_eq!(r("/function/h%65llo/items/1"), ("hello".into(), "/items/1".into()));
        assert_eq!(r("/function/hello/caf%E9"), ("hello".into(), "/caf%E9".into()));
        // A name that does not decode to UTF-8 stays as sent: it matches no function.
        assert_eq!(r("/function/%FF"), ("%FF".into(), "/".into()));
    }
}
