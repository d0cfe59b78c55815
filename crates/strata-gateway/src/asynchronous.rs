//! The asynchronous edge: `/async-function/NAME`, `/topics/NAME`, `/events` (CloudEvents
//! 1.0, binary and structured mode), call status and the dead-letter list.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use strata_orchestrator::queue::{NewCall, QueueError};
use strata_orchestrator::triggers::{self, CloudEvent};
use strata_types::units::format_rfc3339_ms;
use strata_types::{ErrorCode, valid_topic};

use crate::api::Api;
use crate::invoke::{call_id, read_body, route};
use crate::{ApiError, AppState};

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

fn accepted(v: Value, id: &str) -> Response {
    let mut r = (StatusCode::ACCEPTED, Json(v)).into_response();
    if let Ok(h) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-call-id", h);
    }
    r
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub(crate) async fn invoke_async(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, path) = route(&uri, "/async-function/");
    let id = call_id(&headers);
    if !s.orch.has(&name) {
        return Err(ApiError::new(
            ErrorCode::FunctionNotFound,
            format!("function {name} not found"),
        ));
    }
    let body = read_body(body, s.config.max_body).await?;
    let callback_url = headers
        .get("x-callback-url")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(u) = &callback_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("X-Callback-Url {u:?} is not an http(s) URL"),
        ));
    }
    let mut pairs = header_pairs(&headers);
    pairs.retain(|(k, _)| k != "x-callback-url");
    let call = NewCall {
        call_id: id.clone(),
        function: name,
        method: method.as_str().to_owned(),
        path,
        query: uri.query().unwrap_or("").to_owned(),
        headers: pairs,
        body,
        callback_url,
        source: "http".into(),
    };
    s.queue.accept(vec![call]).await?;
    Ok(accepted(json!({"call_id": id, "state": "queued"}), &id))
}

pub(crate) async fn publish(
    State(s): State<AppState>,
    Api(Path(topic)): Api<Path<String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !valid_topic(&topic) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("topic name {topic:?}: use 1 to 128 of A-Z, a-z, 0-9, -, _ and ."),
        ));
    }
    let body = read_body(body, s.config.max_body).await?;
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (id, subs) = triggers::publish(&s.queue, &s.orch, &topic, ct, body).await?;
    Ok(accepted(
        json!({"message_id": id, "topic": topic, "subscribers": subs}),
        &id,
    ))
}

/// Parse a CloudEvent from an HTTP request, structured or binary mode (cloudevents-sdk), into
/// the platform's form: context attributes as strings, the data's media type, the data.
pub fn parse_event(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, String> {
    use cloudevents::AttributesReader;
    let ev = cloudevents::binding::http::to_event(headers, body.to_vec()).map_err(|e| match e {
        cloudevents::message::Error::WrongEncoding {} => {
            "not a CloudEvent: binary mode needs the ce-specversion, ce-id, ce-source and ce-type headers; \
             structured mode a content-type of application/cloudevents+json"
                .to_owned()
        }
        other => format!("invalid CloudEvent: {other}"),
    })?;
    let mut out = CloudEvent::default();
    for (name, value) in ev.iter() {
        out.attributes.insert(name.to_owned(), value.to_string());
    }
    // In binary mode the data's media type travels as Content-Type, not as a ce- header.
    out.attributes.remove("datacontenttype");
    out.datacontenttype = ev.datacontenttype().map(str::to_owned);
    if out.datacontenttype.is_none() && matches!(ev.data(), Some(cloudevents::Data::Json(_))) {
        // The JSON event format: JSON `data` without a datacontenttype is application/json.
        out.datacontenttype = Some("application/json".into());
    }
    out.data = match ev.data() {
        Some(cloudevents::Data::Binary(b)) => Bytes::from(b.clone()),
        Some(cloudevents::Data::String(s)) => Bytes::from(s.clone()),
        Some(cloudevents::Data::Json(v)) => Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
        None => Bytes::new(),
    };
    Ok(out)
}

pub(crate) async fn events(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, s.config.max_body).await?;
    let ev = parse_event(&headers, body).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
    let targets = triggers::route_event(&s.queue, &s.orch, &ev).await?;
    let id = ev.attributes["id"].clone();
    Ok(accepted(json!({"id": id, "routed_to": targets}), &id))
}

fn body_json(headers: &[(String, String)], body: &[u8]) -> Value {
    let _ = headers;
    match std::str::from_utf8(body) {
        Ok(t) => json!({"body": t}),
        Err(_) => json!({"body_base64": base64::engine::general_purpose::STANDARD.encode(body)}),
    }
}

pub(crate) async fn call_status(
    State(s): State<AppState>,
    Api(Path(id)): Api<Path<String>>,
) -> Result<Response, ApiError> {
    let Some((state, result, pending)) = s.store.async_call(&id)? else {
        return Err(ApiError::new(
            ErrorCode::CallNotFound,
            format!("no asynchronous call with id {id}"),
        ));
    };
    let mut v = json!({"call_id": id, "state": state});
    if let Some(r) = result {
        v["function"] = json!(r.function);
        v["status"] = json!(r.status);
        v["headers"] = json!(r.headers);
        v["attempts"] = json!(r.attempts);
        v["errors"] = json!(r.errors);
        v["enqueued_at"] = json!(format_rfc3339_ms(r.enqueued_at_ms));
        v["completed_at"] = json!(format_rfc3339_ms(r.completed_at_ms));
        v["duration_ms"] = json!(r.duration_ms);
        v["callback_url"] = json!(r.callback_url);
        v["callback_delivered"] = json!(r.callback_delivered);
        if let Value::Object(b) = body_json(&r.headers, &r.body) {
            v.as_object_mut().expect("object").extend(b);
        }
    } else if let Some(c) = pending {
        v["function"] = json!(c.function);
        v["attempts"] = json!(c.attempts);
        v["errors"] = json!(c.errors);
        v["enqueued_at"] = json!(format_rfc3339_ms(c.enqueued_at_ms));
    }
    Ok(Json(v).into_response())
}

fn call_json(c: &strata_store::AsyncCall) -> Value {
    json!({
        "call_id": c.call_id,
        "function": c.function,
        "attempts": c.attempts,
        "max_attempts": c.max_attempts,
        "errors": c.errors,
        "enqueued_at": format_rfc3339_ms(c.enqueued_at_ms),
        "source": c.source,
    })
}

pub(crate) async fn dlq(State(s): State<AppState>, Api(Path(name)): Api<Path<String>>) -> Result<Response, ApiError> {
    s.store.function(&name)?;
    let dead = s.store.dead_letters(&name)?;
    Ok(Json(dead.iter().map(call_json).collect::<Vec<_>>()).into_response())
}

pub(crate) async fn dlq_replay(
    State(s): State<AppState>,
    Api(Path(name)): Api<Path<String>>,
) -> Result<Response, ApiError> {
    s.store.function(&name)?;
    let n = s.queue.replay(&name).await?;
    Ok(Json(json!({"function": name, "replayed": n})).into_response())
}

pub(crate) async fn queued(
    State(s): State<AppState>,
    Api(Path(name)): Api<Path<String>>,
) -> Result<Response, ApiError> {
    s.store.function(&name)?;
    Ok(Json(s.queue.queued(&name).iter().map(call_json).collect::<Vec<_>>()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn binary_mode() {
        let ev = parse_event(
            &h(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/shop"),
                ("ce-type", "t"),
                ("content-type", "text/plain"),
            ]),
            Bytes::from_static(b"hi"),
        )
        .unwrap();
        assert_eq!(ev.attributes["source"], "/shop");
        assert_eq!(ev.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(&ev.data[..], b"hi");
    }

    #[test]
    fn structured_mode_with_json_and_base64_data() {
        let ev = parse_event(
            &h(&[("content-type", "application/cloudevents+json")]),
            Bytes::from(r#"{"specversion":"1.0","id":"9","source":"/s","type":"t","data":{"a":1},"ext1":"x"}"#),
        )
        .unwrap();
        assert_eq!(&ev.data[..], br#"{"a":1}"#);
        assert_eq!(ev.attributes["ext1"], "x");
        assert_eq!(ev.datacontenttype.as_deref(), Some("application/json"));
        let ev = parse_event(
            &h(&[("content-type", "application/cloudevents+json")]),
            Bytes::from(r#"{"specversion":"1.0","id":"9","source":"/s","type":"t","data_base64":"AAEC"}"#),
        )
        .unwrap();
        assert_eq!(&ev.data[..], &[0, 1, 2]);
    }

    #[test]
    fn missing_attributes_are_named() {
        let err = parse_event(
            &h(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-type", "t")]),
            Bytes::new(),
        )
        .unwrap_err();
        assert!(err.contains("source"), "{err}");
        let err = parse_event(
            &h(&[("content-type", "application/cloudevents+json")]),
            Bytes::from(r#"{"specversion":"1.0","id":"1","source":"/s"}"#),
        )
        .unwrap_err();
        assert!(err.contains("type"), "{err}");
        let err = parse_event(
            &h(&[("content-type", "application/cloudevents+json")]),
            Bytes::from("nope"),
        )
        .unwrap_err();
        assert!(err.starts_with("invalid CloudEvent"), "{err}");
        let err = parse_event(&h(&[("content-type", "text/plain")]), Bytes::from("x")).unwrap_err();
        assert!(err.starts_with("not a CloudEvent"), "{err}");
    }
}
