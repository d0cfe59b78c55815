//! Stable machine-readable error codes of the HTTP edge. Clients match these, not messages.

use serde::{Deserialize, Serialize};

/// An error code and the HTTP status it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No function of that name (404).
    FunctionNotFound,
    /// No such version of the function (404).
    VersionNotFound,
    /// No invocation with that id (404).
    CallNotFound,
    /// No such route (404).
    RouteNotFound,
    /// The route exists, not with that method (405).
    MethodNotAllowed,
    /// The request body exceeds the configured limit (413).
    PayloadTooLarge,
    /// The request is malformed (400).
    BadRequest,
    /// The uploaded function's manifest or package is invalid (400).
    InvalidManifest,
    /// The function did not answer within its timeout; the instance was replaced (504).
    Timeout,
    /// The instance crashed during the call (502).
    Crash,
    /// The instance was killed for exceeding its memory limit (502).
    Oom,
    /// The instance failed to load the handler (502).
    InitError,
    /// The handler raised an error; the instance lives on (500).
    FunctionError,
    /// All instances are busy and the queue is full, or the wait for one ran out (429).
    OverCapacity,
    /// The daemon is shutting down (503).
    ShuttingDown,
    /// A bug or an environment problem on our side (500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::FunctionNotFound
            | ErrorCode::VersionNotFound
            | ErrorCode::CallNotFound
            | ErrorCode::RouteNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::BadRequest | ErrorCode::InvalidManifest => 400,
            ErrorCode::Timeout => 504,
            ErrorCode::Crash | ErrorCode::Oom | ErrorCode::InitError => 502,
            ErrorCode::FunctionError | ErrorCode::Internal => 500,
            ErrorCode::OverCapacity => 429,
            ErrorCode::ShuttingDown => 503,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FunctionNotFound => "function_not_found",
            ErrorCode::VersionNotFound => "version_not_found",
            ErrorCode::CallNotFound => "call_not_found",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidManifest => "invalid_manifest",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Crash => "crash",
            ErrorCode::Oom => "oom",
            ErrorCode::InitError => "init_error",
            ErrorCode::FunctionError => "function_error",
            ErrorCode::OverCapacity => "over_capacity",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_serde() {
        for c in [
            ErrorCode::FunctionNotFound,
            ErrorCode::Oom,
            ErrorCode::OverCapacity,
            ErrorCode::PayloadTooLarge,
            ErrorCode::MethodNotAllowed,
        ] {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::Value::String(c.as_str().into())
            );
        }
    }
}
