//! The management API (`/api/v1`) and OpenFaaS's `/system/functions`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use strata_store::FunctionMeta;
use strata_types::units::{format_duration_ms, format_rfc3339_ms, format_size};
use strata_types::{ErrorCode, Runtime};

use crate::invoke::read_body;
use crate::{ApiError, AppState};

type ApiResult = Result<axum::response::Response, ApiError>;

fn summary(s: &AppState, m: &FunctionMeta) -> Value {
    let spec = s.store.spec(&m.name, &m.active).ok();
    let stats = s.orch.function_stats(&m.name).unwrap_or_default();
    json!({
        "name": m.name,
        "runtime": spec.as_ref().map(|s| s.runtime.as_str()),
        "version": m.active,
        "versions": m.versions.len(),
        "instances": stats.instances,
        "invocations": s.metrics.invocations_of(&m.name),
        "created_at": format_rfc3339_ms(m.created_at_ms),
    })
}

pub(crate) async fn list(State(s): State<AppState>) -> ApiResult {
    let fns = s.store.functions()?;
    Ok(Json(fns.iter().map(|m| summary(&s, m)).collect::<Vec<_>>()).into_response())
}

pub(crate) async fn system_functions(State(s): State<AppState>) -> ApiResult {
    let fns = s.store.functions()?;
    let out: Vec<Value> = fns
        .iter()
        .map(|m| {
            let spec = s.store.spec(&m.name, &m.active).ok();
            let stats = s.orch.function_stats(&m.name).unwrap_or_default();
            json!({
                "name": m.name,
                "image": format!("strata/{}:{}", m.name, m.active),
                "namespace": "strata",
                "invocationCount": s.metrics.invocations_of(&m.name),
                "replicas": stats.instances + stats.starting,
                "availableReplicas": stats.instances,
                "envProcess": spec.as_ref().map(|s| s.handler.clone()),
                "labels": {"strata.runtime": spec.as_ref().map(|s| s.runtime.as_str())},
                "annotations": {},
            })
        })
        .collect();
    Ok(Json(out).into_response())
}

/// `POST /api/v1/functions`. With `Accept: application/x-ndjson` the answer streams: one
/// `{"progress": line}` object per line a dependency installer prints, then `{"result": …}`
/// or `{"error": {"code", "message"}}` (the status, 200, is sent before the outcome is known).
pub(crate) async fn deploy_handler(State(s): State<AppState>, headers: axum::http::HeaderMap, body: Body) -> ApiResult {
    let archive = read_body(body, s.config.max_package).await?;
    let streaming = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streaming {
        let r = crate::deploy(&s.store, &s.orch, archive, s.config.max_package, None).await?;
        return Ok((StatusCode::CREATED, Json(r)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Value>();
    tokio::spawn(async move {
        let outcome = crate::deploy(&s.store, &s.orch, archive, s.config.max_package, Some(tx)).await;
        let last = match outcome {
            Ok(r) => json!({"result": r}),
            Err(e) => json!({"error": {"code": e.code.as_str(), "message": e.message}}),
        };
        let _ = done_tx.send(last);
    });
    // Progress lines while the deploy runs (the sender closes when it ends), then the outcome.
    let progress = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((json!({"progress": line}), rx))
    });
    let outcome = futures::stream::once(async move {
        done_rx.await.unwrap_or_else(
            |_| json!({"error": {"code": "internal", "message": "the deploy task ended without an answer"}}),
        )
    });
    let lines = futures::StreamExt::map(futures::StreamExt::chain(progress, outcome), |v| {
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!("{v}\n")))
    });
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

pub(crate) async fn describe(State(s): State<AppState>, Api(Path(name)): Api<Path<String>>) -> ApiResult {
    let m = s.store.function(&name)?;
    let spec = s.store.spec(&name, &m.active)?;
    let stats = s.orch.function_stats(&name).unwrap_or_default();
    let mut v = json!({
        "name": spec.name,
        "runtime": spec.runtime.as_str(),
        "handler": spec.handler,
        "mode": spec.mode,
        "version": m.active,
        "memory": format_size(spec.memory_bytes),
        "memory_bytes": spec.memory_bytes,
        "timeout": format_duration_ms(spec.timeout_ms),
        "concurrency": spec.concurrency,
        "min_instances": spec.min_instances,
        "max_instances": spec.max_instances,
        "keep_alive": format_duration_ms(spec.keep_alive_ms),
        "network": spec.network,
        "cpu": spec.cpu_millis.map(|m| format!("{m}m")),
        "env": spec.env,
        "max_attempts": spec.max_attempts,
        "retry_backoff": format_duration_ms(spec.retry_backoff_ms),
        "triggers": spec.triggers,
        "invocations": s.metrics.invocations_of(&name),
        "cold_starts": stats.cold_starts,
        "waiting": stats.waiting,
        "versions": versions_json(&m),
        "instances": stats.detail.iter().map(|(id, inflight, idle)| json!({
            "id": id,
            "state": if *inflight > 0 { "busy" } else { "idle" },
            "inflight": inflight,
            "idle_ms": idle.as_millis() as u64,
        })).collect::<Vec<_>>(),
    });
    // Show only what applies to the function's tier.
    if let Some(obj) = v.as_object_mut() {
        let layer = s
            .orch
            .context()
            .runtimes
            .layers
            .as_ref()
            .and_then(|l| l.of_version(&m.active));
        if let Some((_, info)) = layer {
            obj.insert(
                "dependencies".into(),
                json!({
                    "layer": info.name,
                    "size": format_size(info.size_bytes),
                    "size_bytes": info.size_bytes,
                    "packages": info.packages,
                }),
            );
        }
        if spec.runtime != Runtime::Exec {
            obj.remove("mode");
        }
        if spec.runtime == Runtime::Wasm {
            for k in [
                "concurrency",
                "min_instances",
                "max_instances",
                "keep_alive",
                "network",
                "cpu",
            ] {
                obj.remove(k);
            }
            let hosts = if spec.allowed_outbound_hosts.is_empty() {
                "none".to_owned()
            } else {
                spec.allowed_outbound_hosts.join(", ")
            };
            obj.insert("allowed_outbound_hosts".into(), hosts.into());
            obj.insert(
                "files".into(),
                spec.files.clone().unwrap_or_else(|| "none".into()).into(),
            );
        }
    }
    Ok(Json(v).into_response())
}

fn versions_json(m: &FunctionMeta) -> Vec<Value> {
    m.versions
        .iter()
        .map(|v| json!({"version": v.version, "created_at": format_rfc3339_ms(v.created_at_ms), "active": v.version == m.active}))
        .collect()
}

pub(crate) async fn versions(State(s): State<AppState>, Api(Path(name)): Api<Path<String>>) -> ApiResult {
    let m = s.store.function(&name)?;
    Ok(Json(versions_json(&m)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RollbackBody {
    to: Option<String>,
}

pub(crate) async fn rollback(State(s): State<AppState>, Api(Path(name)): Api<Path<String>>, body: Body) -> ApiResult {
    let bytes = read_body(body, 64 << 10).await?;
    let to = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<RollbackBody>(&bytes)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("rollback body: {e}")))?
            .to
    };
    let (store, n) = (s.store.clone(), name.clone());
    let m = crate::off_thread(move || store.rollback(&n, to.as_deref())).await??;
    let spec = s.store.spec(&name, &m.active)?;
    // Off the HTTP thread: a wasm version whose machine code is not in the cache (cleared,
    // or from another engine) is compiled, maybe pre-initialised, on activation.
    let (orch, v) = (Arc::clone(&s.orch), m.active.clone());
    crate::off_thread(move || orch.activate(spec, &v))
        .await?
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("activating {}: {e}", m.active)))?;
    Ok(Json(json!({"name": name, "version": m.active})).into_response())
}

pub(crate) async fn remove(State(s): State<AppState>, Api(Path(name)): Api<Path<String>>) -> ApiResult {
    s.store.function(&name)?;
    s.orch.remove(&name).await;
    let (store, n) = (s.store.clone(), name.clone());
    crate::off_thread(move || store.delete(&n)).await??;
    Ok(Json(json!({"name": name, "deleted": true})).into_response())
}

#[derive(Deserialize)]
pub(crate) struct LogsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn logs(
    State(s): State<AppState>,
    Api(Path(name)): Api<Path<String>>,
    Api(Query(q)): Api<Query<LogsQuery>>,
) -> ApiResult {
    s.store.function(&name)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let lines = match q.since {
        Some(since) => s.store.logs(&name, since, limit)?,
        None => s.store.tail(&name, limit)?,
    };
    let next = lines.last().map_or(q.since.unwrap_or(0), |l| l.seq + 1);
    let lines: Vec<Value> = lines
        .into_iter()
        .map(|l| json!({"seq": l.seq, "ts": format_rfc3339_ms(l.ts_ms), "call_id": l.call_id, "stream": l.stream, "line": l.line}))
        .collect();
    Ok(Json(json!({"lines": lines, "next": next})).into_response())
}

#[derive(Deserialize)]
pub(crate) struct LimitQuery {
    limit: Option<usize>,
}

fn record_json(r: &strata_types::InvocationRecord) -> Value {
    json!({
        "call_id": r.call_id,
        "function": r.function,
        "version": r.version,
        "started_at": format_rfc3339_ms(r.started_at_ms),
        "duration_ms": r.duration_ms,
        "status": r.status,
        "error": r.error,
        "cold": r.cold,
        "cold_start": r.cold_start,
        "cpu_ms": r.cpu_ms,
        "memory_peak_bytes": r.memory_peak_bytes,
        "instance": r.instance,
    })
}

pub(crate) async fn invocations(
    State(s): State<AppState>,
    Api(Path(name)): Api<Path<String>>,
    Api(Query(q)): Api<Query<LimitQuery>>,
) -> ApiResult {
    s.store.function(&name)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 10_000);
    let recs = s.store.records(&name, limit)?;
    Ok(Json(recs.iter().map(record_json).collect::<Vec<_>>()).into_response())
}

pub(crate) async fn invocation(State(s): State<AppState>, Api(Path(id)): Api<Path<String>>) -> ApiResult {
    match s.store.call(&id)? {
        Some(r) => Ok(Json(record_json(&r)).into_response()),
        None => Err(ApiError::new(
            ErrorCode::CallNotFound,
            format!("no invocation with id {id}"),
        )),
    }
}

pub(crate) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::RouteNotFound, format!("no route for {}", uri.path()))
}

pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not a method of {}", uri.path()),
    )
}

/// An axum extractor (`Path`, `Query`) whose rejection is answered as the API's JSON 400
/// (`bad_request`), not axum's plain text: a path that does not decode, a malformed query.
pub(crate) struct Api<E>(pub E);

impl<E, S> axum::extract::FromRequestParts<S> for Api<E>
where
    E: axum::extract::FromRequestParts<S>,
    E::Rejection: std::fmt::Display,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        E::from_request_parts(parts, state)
            .await
            .map(Api)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
    }
}
