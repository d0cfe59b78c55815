use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use strata_store::StoreError;
use strata_types::ErrorCode;

/// An error at the HTTP edge: a stable code and a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// The call it concerns, if any.
    pub call_id: Option<String>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            call_id: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::FunctionNotFound(_) => ErrorCode::FunctionNotFound,
            StoreError::VersionNotFound { .. } => ErrorCode::VersionNotFound,
            StoreError::Package(_) => ErrorCode::InvalidManifest,
            _ => ErrorCode::Internal,
        };
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "store error");
        }
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"code": self.code.as_str(), "message": self.message});
        if let Some(id) = &self.call_id {
            body["call_id"] = serde_json::Value::String(id.clone());
        }
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(body)).into_response();
        if self.code == ErrorCode::OverCapacity {
            resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        }
        if let Some(id) = self.call_id.as_deref().and_then(|i| HeaderValue::from_str(i).ok()) {
            resp.headers_mut().insert("x-call-id", id);
        }
        resp
    }
}
