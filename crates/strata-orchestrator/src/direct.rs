//! Tiers that make an instance per call (the WebAssembly tier): the orchestrator routes to
//! them and records their calls, but has no pool to manage.
//!
//! The traits live here so this crate does not depend on wasmtime: the `strata` binary
//! implements them with `strata-sandbox-wasm` and puts the tier in [`crate::Context`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use strata_instance::{LogSink, Request, Response};
use strata_types::{ColdStart, FunctionSpec};

use crate::{Error, PoolStats};

/// What one call through a direct tier produced.
#[derive(Debug)]
pub struct DirectOutcome {
    /// The response, or why there is none.
    pub result: Result<Response, Error>,
    /// Set on the first call after the function was loaded: compile, load, instantiate.
    pub cold: Option<ColdStart>,
    /// CPU time, when the tier measures it.
    pub cpu_ms: f64,
    /// Peak memory, when the tier measures it.
    pub memory_peak_bytes: u64,
}

/// A tier: prepares packages at deploy and loads versions for serving.
pub trait DirectTier: Send + Sync {
    /// Validate and compile the version in `code_dir` (deploy). Returns a one-line summary
    /// for the deploy output, e.g. "compiled in 812 ms" or "compiled artifact cached".
    fn prepare(&self, spec: &FunctionSpec, code_dir: &Path) -> Result<String, String>;

    /// Make the version in `code_dir` ready to serve; its output goes to `logs`.
    fn load(
        &self,
        spec: Arc<FunctionSpec>,
        version: &str,
        code_dir: &Path,
        logs: LogSink,
    ) -> Result<Arc<dyn DirectFunction>, String>;
}

/// One loaded version of a function on a direct tier.
pub trait DirectFunction: Send + Sync {
    /// Serve one call.
    fn call(&self, req: Request) -> Pin<Box<dyn Future<Output = DirectOutcome> + Send + '_>>;

    /// Calls in flight and cold starts, in the shape of a pool's stats.
    fn stats(&self) -> PoolStats;
}
