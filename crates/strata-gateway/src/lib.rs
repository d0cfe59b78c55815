//! The HTTP edge of Strata: the OpenFaaS-compatible invocation routes (`/function/NAME`,
//! `/system/functions`), the JSON management API under `/api/v1` (described by the OpenAPI
//! document at `/openapi.json`), `/healthz` and Prometheus `/metrics`.
//!
//! Every error leaves as `{"code": "...", "message": "..."}` with a stable code. Handlers
//! translate HTTP to orchestrator calls and back; no scheduling decision is made here.
#![forbid(unsafe_code)]

mod api;
mod asynchronous;
mod deploy;
mod error;
mod invoke;
mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use strata_orchestrator::Orchestrator;
use strata_store::Store;

pub use asynchronous::parse_event;
pub use deploy::{DeployResult, deploy};
pub use error::ApiError;
pub use metrics::Metrics;

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest invocation body accepted, bytes.
    pub max_body: usize,
    /// Largest function package accepted, bytes.
    pub max_package: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            // 6 MiB: Lambda's synchronous payload limit, which clients already expect.
            max_body: 6 << 20,
            // 256 MiB: room for a function with vendored dependencies.
            max_package: 256 << 20,
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Routing and instances.
    pub orch: Arc<Orchestrator>,
    /// Registry, records, logs.
    pub store: Store,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The asynchronous queue.
    pub queue: Arc<strata_orchestrator::queue::AsyncQueue>,
    /// Limits.
    pub config: GatewayConfig,
}

/// Run blocking work (a store change, which waits for the writer's commit and its fsync; a
/// compile) on the blocking pool: an HTTP thread serves all of its connections, and a handler
/// that blocked it would stall them all.
pub(crate) async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(strata_types::ErrorCode::Internal, e.to_string()))
}

/// The complete router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/function/{name}", any(invoke::invoke))
        .route("/function/{name}/", any(invoke::invoke))
        .route("/function/{name}/{*rest}", any(invoke::invoke))
        .route("/async-function/{name}", any(asynchronous::invoke_async))
        .route("/async-function/{name}/", any(asynchronous::invoke_async))
        .route("/async-function/{name}/{*rest}", any(asynchronous::invoke_async))
        .route("/topics/{topic}", post(asynchronous::publish))
        .route("/events", post(asynchronous::events))
        .route("/api/v1/calls/{id}", get(asynchronous::call_status))
        .route("/api/v1/functions/{name}/dlq", get(asynchronous::dlq))
        .route("/api/v1/functions/{name}/dlq/replay", post(asynchronous::dlq_replay))
        .route("/api/v1/functions/{name}/queue", get(asynchronous::queued))
        .route("/system/functions", get(api::system_functions))
        .route("/api/v1/functions", get(api::list).post(api::deploy_handler))
        .route("/api/v1/functions/{name}", get(api::describe).delete(api::remove))
        .route("/api/v1/functions/{name}/versions", get(api::versions))
        .route("/api/v1/functions/{name}/rollback", post(api::rollback))
        .route("/api/v1/functions/{name}/logs", get(api::logs))
        .route("/api/v1/functions/{name}/invocations", get(api::invocations))
        .route("/api/v1/invocations/{id}", get(api::invocation))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics::handler))
        .route("/openapi.json", get(api::openapi))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}
