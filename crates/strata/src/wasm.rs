//! The WebAssembly tier, plugged into the orchestrator: `strata-sandbox-wasm` behind the
//! orchestrator's [`DirectTier`] traits, translating calls, results, logs and records.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_instance::{InvokeError, LogSink, Request, Response};
use strata_orchestrator::{DirectFunction, DirectOutcome, DirectTier, Error, PoolStats};
use strata_sandbox_wasm::{
    Ahead, AllowedHosts, ArtifactSource, CallError, EngineConfig, HttpCall, Limits, WasmEngine, WasmFunction,
};
use strata_types::{ArtifactOrigin, ColdPath, ColdStart, FunctionSpec, LogStream};

/// stdout and stderr kept per call.
const MAX_OUTPUT: usize = 1 << 20;
/// Largest response a wasm function may return.
const MAX_RESPONSE: usize = 64 << 20;

/// The tier: one engine, its artifact cache under the data folder.
pub struct Tier {
    engine: WasmEngine,
}

impl Tier {
    /// The engine, with compiled artifacts cached in `data/wasm-cache`.
    pub fn new(data: &Path) -> anyhow::Result<Tier> {
        let mut cfg = EngineConfig::new(data.join("wasm-cache"));
        // Operators (and benchmarks) can pin how instances are made: `never` ahead (every
        // call makes its own), `when-idle` (ahead whenever a core is spare), `always`;
        // unset, the engine measures which is faster here (`adaptive`).
        if let Ok(v) = std::env::var("STRATA_WASM_AHEAD") {
            cfg.ahead = match v.as_str() {
                "never" => Ahead::Never,
                "when-idle" => Ahead::WhenIdle,
                "always" => Ahead::Always,
                "adaptive" => Ahead::Adaptive,
                "after-response" => Ahead::AfterResponse,
                other => anyhow::bail!(
                    "STRATA_WASM_AHEAD = {other:?}: expected never, when-idle, always, adaptive or after-response"
                ),
            };
        }
        // The engine's instance slots: calls of all wasm functions at once (1,000 unless set).
        if let Ok(v) = std::env::var("STRATA_WASM_SLOTS") {
            cfg.max_instances = v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| anyhow::anyhow!("STRATA_WASM_SLOTS = {v:?}: expected a number from 1 to 100000"))?;
        }
        let engine = WasmEngine::new(cfg)?;
        Ok(Tier { engine })
    }
}

impl DirectTier for Tier {
    fn prepare(&self, spec: &FunctionSpec, code_dir: &Path) -> Result<String, String> {
        let info = self
            .engine
            .prepare(&code_dir.join(&spec.handler), spec.memory_bytes)
            .map_err(|e| e.to_string())?;
        let preinit = if info.preinit_ms > 0.0 {
            format!(
                " (wizer-initialize run and snapshotted first, {:.0} ms of it)",
                info.preinit_ms
            )
        } else {
            String::new()
        };
        Ok(match info.source {
            ArtifactSource::Compiled { ms } => format!("compiled to machine code in {ms:.0} ms{preinit}"),
            ArtifactSource::Cached => "compiled artifact found in the cache, nothing to compile".into(),
            ArtifactSource::Rebuilt { reason, ms } => {
                format!("cached artifact rejected ({reason}), compiled again in {ms:.0} ms{preinit}")
            }
        })
    }

    fn load(
        &self,
        spec: Arc<FunctionSpec>,
        version: &str,
        code_dir: &Path,
        logs: LogSink,
    ) -> Result<Arc<dyn DirectFunction>, String> {
        let limits = Limits {
            memory_bytes: spec.memory_bytes,
            timeout: Duration::from_millis(spec.timeout_ms),
            allowed_hosts: AllowedHosts::parse(&spec.allowed_outbound_hosts).map_err(|e| e.to_string())?,
            env: spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            files: spec.files.as_ref().map(|f| code_dir.join(f)),
            max_output_bytes: MAX_OUTPUT,
            max_response_bytes: MAX_RESPONSE,
        };
        let function = self
            .engine
            .load(&code_dir.join(&spec.handler), limits)
            .map_err(|e| e.to_string())?;
        tracing::info!(function = %spec.name, version, info = ?function.info(), "wasm function loaded");
        Ok(Arc::new(Loaded {
            function,
            logs,
            first: AtomicBool::new(true),
            cold_starts: AtomicU64::new(0),
        }))
    }
}

/// One loaded version.
struct Loaded {
    function: WasmFunction,
    logs: LogSink,
    /// The first call reports the cold start: compile, load and instantiate.
    first: AtomicBool,
    cold_starts: AtomicU64,
}

impl Loaded {
    fn log(&self, call: &str, stream: LogStream, output: &(Bytes, u64), what: &str) {
        let (bytes, dropped) = output;
        for line in String::from_utf8_lossy(bytes).lines() {
            (self.logs)(Some(call), stream, line.to_owned());
        }
        if *dropped > 0 {
            (self.logs)(
                Some(call),
                LogStream::System,
                format!("{dropped} more bytes of {what} dropped (limit {MAX_OUTPUT} bytes per call)"),
            );
        }
    }

    async fn serve(&self, req: Request) -> DirectOutcome {
        let Request {
            id,
            method,
            mut path,
            query,
            headers,
            body,
        } = req;
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query);
        }
        let call = HttpCall {
            method,
            path_with_query: path,
            headers,
            body,
        };
        let report = self.function.call(call).await;
        self.log(&id, LogStream::Stdout, &report.stdout, "stdout");
        self.log(&id, LogStream::Stderr, &report.stderr, "stderr");
        let result = match report.result {
            Ok(reply) => Ok(Response {
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
            }),
            Err(e) => {
                for line in e.to_string().lines() {
                    (self.logs)(Some(&id), LogStream::System, line.to_owned());
                }
                Err(match e {
                    // Every slot stayed taken: 429 with Retry-After, as a full pool answers.
                    CallError::OverCapacity(_) => Error::OverCapacity,
                    CallError::Timeout(d) => Error::Invoke(InvokeError::Timeout(d)),
                    CallError::OutOfMemory(_) => Error::Invoke(InvokeError::Oom),
                    CallError::Trap(m) => {
                        Error::Invoke(InvokeError::Crash(format!("trap: {}", m.lines().next().unwrap_or(""))))
                    }
                    CallError::BadResponse(m) => Error::Invoke(InvokeError::Crash(m)),
                    CallError::Exit(code) => Error::Invoke(InvokeError::Function(format!("exited with status {code}"))),
                })
            }
        };
        let cold = self.first.swap(false, Ordering::Relaxed).then(|| {
            self.cold_starts.fetch_add(1, Ordering::Relaxed);
            let info = self.function.info();
            ColdStart {
                path: ColdPath::Wasm,
                compile_ms: info.compile_ms(),
                preinit_ms: info.preinit_ms,
                load_ms: info.load_ms,
                instantiate_ms: report.instantiate.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                artifact: Some(match info.source {
                    ArtifactSource::Compiled { .. } => ArtifactOrigin::Compiled,
                    ArtifactSource::Cached => ArtifactOrigin::Cached,
                    ArtifactSource::Rebuilt { .. } => ArtifactOrigin::Rebuilt,
                }),
                ..ColdStart::default()
            }
        });
        DirectOutcome {
            result,
            cold,
            cpu_ms: report.cpu.as_secs_f64() * 1000.0,
            memory_peak_bytes: report.memory_peak_bytes,
        }
    }
}

impl DirectFunction for Loaded {
    fn call(&self, req: Request) -> Pin<Box<dyn Future<Output = DirectOutcome> + Send + '_>> {
        Box::pin(self.serve(req))
    }

    fn stats(&self) -> PoolStats {
        PoolStats {
            inflight: self.function.inflight(),
            cold_starts: self.cold_starts.load(Ordering::Relaxed),
            ..PoolStats::default()
        }
    }
}
