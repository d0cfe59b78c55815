//! The Orchestration layer: routes each invocation of a function to an instance of its
//! active version, starts instances while calls wait (scale from zero), stops idle ones
//! after keep-alive (scale to zero), keeps `min_instances`, drains old versions on redeploy,
//! and records every call.
//!
//! The decisions are pure functions in [`scaling`]; [`pool`] carries them out with real
//! instances. Nothing here speaks HTTP: the gateway calls [`Orchestrator::invoke`].

pub mod direct;
pub mod keepalive;
pub mod pool;
pub mod queue;
pub mod scaling;
pub mod triggers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use direct::{DirectFunction, DirectOutcome, DirectTier};

use strata_instance::{InvokeError, LaunchSpec, LogSink, Request, Response, Runtimes};
use strata_sandbox::Backend;
use strata_store::{Store, now_ms};
use strata_types::{ColdStart, ErrorCode, FunctionSpec, InvocationRecord, LogStream, Runtime};

pub use pool::{Lease, Pool, PoolStats};

/// Why a call did not produce a handler response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No such function.
    #[error("function {0} not found")]
    NotFound(String),
    /// No instance became free in time, or the queue is full.
    #[error("function is over capacity")]
    OverCapacity,
    /// The pool is being replaced (internal; the router retries on the new one).
    #[error("function version is draining")]
    Draining,
    /// The instance failed to load the handler.
    #[error("instance failed to start: {0}")]
    Init(String),
    /// The call failed in the instance.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// The daemon is stopping.
    #[error("shutting down")]
    ShuttingDown,
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotFound(_) => ErrorCode::FunctionNotFound,
            Error::OverCapacity | Error::Draining => ErrorCode::OverCapacity,
            Error::Init(_) => ErrorCode::InitError,
            Error::Invoke(InvokeError::Timeout(_)) => ErrorCode::Timeout,
            Error::Invoke(InvokeError::Oom) => ErrorCode::Oom,
            Error::Invoke(InvokeError::Crash(_)) => ErrorCode::Crash,
            Error::Invoke(InvokeError::Function(_)) => ErrorCode::FunctionError,
            Error::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }
}

/// What every pool needs.
pub struct Context {
    /// The sandbox backend.
    pub backend: Backend,
    /// Runtime bootstraps.
    pub runtimes: Runtimes,
    /// State.
    pub store: Store,
    /// Calls that may wait per function version before 429.
    pub queue_depth: usize,
    /// The WebAssembly tier, when this daemon has one.
    pub wasm: Option<Arc<dyn DirectTier>>,
    /// The daemon-wide keep-alive policy; `None`: each function's manifest `keep_alive`.
    pub keep_alive: Option<Arc<keepalive::KeepAlive>>,
}

impl Context {
    /// Where a function's output goes: its log in the store.
    pub fn log_sink(&self, function: &str) -> LogSink {
        let store = self.store.clone();
        let function = function.to_owned();
        Arc::new(move |call: Option<&str>, stream: LogStream, line: String| store.log(&function, call, stream, line))
    }
}

/// The outcome of one call, for the gateway.
#[derive(Debug)]
pub struct Outcome {
    /// The handler's response, or why there is none.
    pub result: Result<Response, Error>,
    /// The version that served it.
    pub version: Option<String>,
    /// Whether it waited for a new instance.
    pub cold: Option<ColdStart>,
}

/// How a function's calls are served.
#[derive(Clone)]
enum Serving {
    /// Process instances, reused across calls.
    Pool(Arc<Pool>),
    /// A tier that makes an instance per call (wasm), and the version it serves.
    Direct(Arc<dyn DirectFunction>, Arc<str>),
}

struct Entry {
    spec: Arc<FunctionSpec>,
    serving: Serving,
}

impl Serving {
    fn stats(&self) -> PoolStats {
        match self {
            Serving::Pool(p) => p.stats(),
            Serving::Direct(d, _) => d.stats(),
        }
    }
}

impl Entry {
    fn pool(&self) -> Option<&Arc<Pool>> {
        match &self.serving {
            Serving::Pool(p) => Some(p),
            Serving::Direct(..) => None,
        }
    }
}

/// Routes calls to pools.
pub struct Orchestrator {
    ctx: Arc<Context>,
    functions: Mutex<HashMap<String, Entry>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator").finish_non_exhaustive()
    }
}

/// How long a drained version's calls in flight may take before their instances are killed.
const DRAIN_GRACE: Duration = Duration::from_secs(60);

impl Orchestrator {
    /// An orchestrator with no functions; call [`Orchestrator::activate`] for each, and
    /// spawn [`Orchestrator::run_ticks`].
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Orchestrator {
            ctx: Arc::new(ctx),
            functions: Mutex::new(HashMap::new()),
            stopping: false.into(),
        })
    }

    /// The shared context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Route `spec.name` to `version`: a new pool, or for wasm a loaded component. The
    /// previous pool drains in the background. Fails (and changes nothing) when the version
    /// cannot be served here.
    pub fn activate(&self, spec: FunctionSpec, version: &str) -> Result<(), Error> {
        let code_dir = self.ctx.store.blobs().code_dir(version);
        let spec = Arc::new(spec);
        let serving = if spec.runtime == Runtime::Wasm {
            let tier = self
                .ctx
                .wasm
                .as_ref()
                .ok_or_else(|| Error::Init("this daemon has no wasm tier".into()))?;
            let logs = self.ctx.log_sink(&spec.name);
            let function = tier
                .load(Arc::clone(&spec), version, &code_dir, logs)
                .map_err(Error::Init)?;
            Serving::Direct(function, version.into())
        } else {
            let deps = self
                .ctx
                .runtimes
                .layers
                .as_ref()
                .and_then(|l| l.of_version(version))
                .map(|(path, _)| path);
            let launch = LaunchSpec {
                code_dir,
                spec: Arc::clone(&spec),
                version: version.to_owned(),
                deps,
            };
            let pool = Pool::new(Arc::clone(&self.ctx), launch);
            if let Some(ka) = &self.ctx.keep_alive {
                // A first estimate of the cold start; the first real one replaces it.
                let estimate_ms = match spec.runtime {
                    Runtime::Node => 60.0,
                    Runtime::Python => 10.0,
                    _ => 3.0,
                };
                ka.profile(&spec.name, pool.profile(estimate_ms));
            }
            Serving::Pool(pool)
        };
        let entry = Entry {
            spec: Arc::clone(&spec),
            serving,
        };
        let old = self
            .functions
            .lock()
            .expect("functions lock")
            .insert(spec.name.clone(), entry);
        if let Some(Serving::Pool(old)) = old.map(|e| e.serving) {
            tokio::spawn(async move { old.drain(DRAIN_GRACE).await });
        }
        Ok(())
    }

    /// Forget a function; its instances drain.
    pub async fn remove(&self, name: &str) {
        let old = self.functions.lock().expect("functions lock").remove(name);
        if let Some(Serving::Pool(old)) = old.map(|e| e.serving) {
            old.drain(DRAIN_GRACE).await;
        }
    }

    /// Whether `name` is an active function.
    pub fn has(&self, name: &str) -> bool {
        self.functions.lock().expect("functions lock").contains_key(name)
    }

    /// The active spec of a function.
    pub fn spec(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        self.functions
            .lock()
            .expect("functions lock")
            .get(name)
            .map(|e| Arc::clone(&e.spec))
    }

    /// The active pool of a process function.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.functions
            .lock()
            .expect("functions lock")
            .get(name)
            .and_then(|e| e.pool().cloned())
    }

    /// The specs of every active function.
    pub fn specs(&self) -> Vec<Arc<FunctionSpec>> {
        self.functions
            .lock()
            .expect("functions lock")
            .values()
            .map(|e| Arc::clone(&e.spec))
            .collect()
    }

    /// Stats of one function.
    pub fn function_stats(&self, name: &str) -> Option<PoolStats> {
        Some(self.serving(name)?.stats())
    }

    /// Stats of every function.
    pub fn stats(&self) -> Vec<(String, PoolStats)> {
        let all: Vec<(String, Serving)> = self
            .functions
            .lock()
            .expect("functions lock")
            .iter()
            .map(|(k, e)| (k.clone(), e.serving.clone()))
            .collect();
        all.into_iter().map(|(k, s)| (k, s.stats())).collect()
    }

    /// Keep-alive and min-instance upkeep, every 500 ms, forever; with a daemon-wide
    /// keep-alive policy, also its decisions, each carried out when due.
    pub async fn run_ticks(self: Arc<Self>) {
        if let Some(ka) = self.ctx.keep_alive.clone() {
            tokio::spawn(Arc::clone(&self).run_keep_alive(ka));
        }
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            every.tick().await;
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let pools: Vec<Arc<Pool>> = self
                .functions
                .lock()
                .expect("functions lock")
                .values()
                .filter_map(|e| e.pool().cloned())
                .collect();
            let now = Instant::now();
            for p in pools {
                p.tick(now);
            }
        }
    }

    /// Sleep until the policy's next deadline (or an event that may bring it forward), then
    /// carry out its decisions.
    async fn run_keep_alive(self: Arc<Self>, ka: Arc<keepalive::KeepAlive>) {
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let wait = ka
                .until_next()
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = ka.changed() => {}
                }
            }
            self.carry_out(ka.decide());
        }
    }

    /// Carry out a keep-alive policy's decisions.
    fn carry_out(&self, actions: keepalive::Actions) {
        if actions == keepalive::Actions::default() {
            return;
        }
        let pool_of = |name: &str| {
            self.functions
                .lock()
                .expect("functions lock")
                .get(name)
                .and_then(|e| e.pool().cloned())
        };
        for name in &actions.stop {
            let stopped = pool_of(name).is_some_and(|p| p.stop_longest_idle());
            if !stopped {
                tracing::debug!(function = %name, "keep-alive policy: no idle instance to stop");
            }
        }
        for name in &actions.prewarm {
            match pool_of(name) {
                Some(p) => p.prewarm(),
                // Gone since (removed, or a wasm function now): no instance after all.
                None => {
                    if let Some(ka) = &self.ctx.keep_alive {
                        ka.lost(name, true);
                    }
                }
            }
        }
    }

    /// Invoke a function and record the call.
    pub async fn invoke(&self, name: &str, req: Request) -> Outcome {
        let started = Instant::now();
        let started_ms = now_ms();
        let call_id = req.id.clone();
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return Outcome {
                result: Err(Error::ShuttingDown),
                version: None,
                cold: None,
            };
        }
        // A redeploy can swap the pool between lookup and acquire: retry on the new one.
        let mut lease = None;
        let mut last_err = Error::NotFound(name.to_owned());
        let mut pool = None;
        for _ in 0..3 {
            let p = match self.serving(name) {
                Some(Serving::Pool(p)) => p,
                Some(Serving::Direct(function, version)) => {
                    let out = function.call(req).await;
                    let (cold, usage) = (out.cold, (out.cpu_ms, out.memory_peak_bytes));
                    let version = Some(version.to_string());
                    self.record(
                        name,
                        &call_id,
                        version.clone(),
                        started_ms,
                        started,
                        cold,
                        &out.result,
                        usage,
                        None,
                    );
                    return Outcome {
                        result: out.result,
                        version,
                        cold,
                    };
                }
                None => {
                    // A pool drained by the daemon's stop sends its callers here: the
                    // function is not gone, the daemon is going.
                    let stopping = self.stopping.load(std::sync::atomic::Ordering::Relaxed);
                    return Outcome {
                        result: Err(if stopping {
                            Error::ShuttingDown
                        } else {
                            Error::NotFound(name.to_owned())
                        }),
                        version: None,
                        cold: None,
                    };
                }
            };
            let wait = Duration::from_millis(p.launch.spec.timeout_ms).max(Duration::from_secs(30));
            match p.acquire(wait).await {
                Ok(l) => {
                    lease = Some(l);
                    pool = Some(p);
                    break;
                }
                Err(Error::Draining) => {
                    last_err = Error::Draining;
                    continue;
                }
                Err(e) => {
                    last_err = e;
                    pool = Some(p);
                    break;
                }
            }
        }
        let version = pool.as_ref().map(|p| p.launch.version.clone());
        let Some(lease) = lease else {
            self.record(
                name,
                &call_id,
                version.clone(),
                started_ms,
                started,
                None,
                &Err(last_err.clone()),
                (0.0, 0),
                None,
            );
            return Outcome {
                result: Err(last_err),
                version,
                cold: None,
            };
        };
        let cold = lease.cold;
        let inst = Arc::clone(lease.instance());
        let result = inst.invoke(req).await.map_err(Error::from);
        let usage = inst.take_usage();
        drop(lease);
        self.record(
            name,
            &call_id,
            version.clone(),
            started_ms,
            started,
            cold,
            &result,
            usage,
            Some(inst.id()),
        );
        Outcome { result, version, cold }
    }

    /// Whether the daemon is stopping (calls are drained, new ones refused).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How `name` is served: one lookup, for the hot path.
    fn serving(&self, name: &str) -> Option<Serving> {
        let functions = self.functions.lock().expect("functions lock");
        functions.get(name).map(|e| e.serving.clone())
    }

    #[allow(clippy::too_many_arguments)] // one record's fields, gathered in one place
    fn record(
        &self,
        name: &str,
        call_id: &str,
        version: Option<String>,
        started_ms: u64,
        started: Instant,
        cold: Option<ColdStart>,
        result: &Result<Response, Error>,
        (cpu_ms, memory_peak_bytes): (f64, u64),
        instance: Option<&str>,
    ) {
        let (status, error) = match result {
            Ok(r) => (r.status, None),
            Err(e) => (e.code().status(), Some(e.code().as_str().to_owned())),
        };
        self.ctx.store.record(InvocationRecord {
            call_id: call_id.to_owned(),
            function: name.to_owned(),
            version: version.unwrap_or_default(),
            started_at_ms: started_ms,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            cold: cold.is_some(),
            cold_start: cold,
            status,
            error,
            cpu_ms,
            memory_peak_bytes,
            instance: instance.map(str::to_owned),
        });
    }

    /// Stop taking calls and stop every instance (calls in flight get `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let pools: Vec<Arc<Pool>> = self
            .functions
            .lock()
            .expect("functions lock")
            .drain()
            .filter_map(|(_, e)| e.pool().cloned())
            .collect();
        // All pools drain at once, so shutdown takes one grace period at most, not one each.
        let mut drains = tokio::task::JoinSet::new();
        for p in pools {
            drains.spawn(async move { p.drain(grace).await });
        }
        while drains.join_next().await.is_some() {}
        self.ctx.store.flush();
    }
}
