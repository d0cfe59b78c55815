//! The engine: one wasmtime `Engine` with the pooling allocator and epoch interruption, the
//! linker with WASI and `wasi:http`, and the artifact cache.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::WasmError;
use crate::cache::{ArtifactCache, Lookup};
use crate::call::{CallState, Function};
use crate::recycle::{Load, Recycler, Stash};
use strata_types::AllowedHosts;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled artifacts are kept.
    pub cache_dir: PathBuf,
    /// Instances that may exist at once (pool slots); calls beyond wait for a slot.
    pub max_instances: u32,
    /// The largest linear memory any function may ask for.
    pub max_memory_bytes: u64,
    /// The epoch tick: the granularity of timeouts and of a spinning guest's yields.
    pub epoch_tick: Duration,
    /// Instances from the pooling allocator (the default); off allocates each instance's
    /// memories and tables with mmap, for comparison in benchmarks.
    pub pooling: bool,
    /// Whether, and where, each function's next instance is made ahead of its call: on the
    /// engine's recycler thread (which then also drops used ones), or on the call's worker
    /// after its response.
    pub ahead: Ahead,
    /// How long an instance made ahead waits for a call before it is dropped.
    pub ready_idle: Duration,
    /// Whether what is done while a core is spare (instances made ahead, drops after the
    /// response) waits for the machine to have one (the default); off, the engine acts as
    /// if it always had one (tests, whose results must not depend on the machine's load).
    pub load_aware: bool,
}

/// When the engine's recycler thread makes instances ahead of calls and drops used ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
    /// Never: every call makes and drops its own instance (for comparison in benchmarks).
    Never,
    /// While the machine has a core to spare: when it has none, the work moved off a call's
    /// path would only compete with the calls, so they do it themselves.
    WhenIdle,
    /// While the machine has a core to spare, as `WhenIdle` or as `AfterResponse`, whichever
    /// makes a client calling the function back to back faster on this machine, which the
    /// engine measures on the calls themselves (`choose.rs`; the default): the hand-off and
    /// the recycler's work on another core can cost more than the same work on the call's
    /// own worker.
    Adaptive,
    /// Whatever the load (tests).
    Always,
    /// While the machine has a core to spare, on the call's own worker: once a call's response
    /// is on its way, the task that drops its store then makes the function's next instance
    /// (into the slot just freed, on the core whose caches hold it), so the next call runs the
    /// guest only. With no core spare, calls make and drop their own. The recycler thread
    /// only drops the instances no call took.
    AfterResponse,
}

impl EngineConfig {
    /// Defaults, with the cache in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            cache_dir: cache_dir.into(),
            max_instances: 1000,
            max_memory_bytes: 1 << 30,
            epoch_tick: Duration::from_millis(5),
            pooling: true,
            ahead: Ahead::Adaptive,
            ready_idle: Duration::from_secs(30),
            load_aware: true,
        }
    }
}

/// What a function may do, per call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory (all memories of an instance together), bytes.
    pub memory_bytes: u64,
    /// Wall time of a call.
    pub timeout: Duration,
    /// Where outbound HTTP may go.
    pub allowed_hosts: AllowedHosts,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// A host folder the guest sees read-only at `/`, if any.
    pub files: Option<PathBuf>,
    /// Bytes of stdout and of stderr kept per call.
    pub max_output_bytes: usize,
    /// Largest response body accepted from the guest.
    pub max_response_bytes: usize,
}

impl Default for Limits {
    /// A function granted nothing: 64 MiB, 10 s, no outbound hosts, no environment, no
    /// folder; 1 MiB of stdout and of stderr kept, responses up to 1 MiB.
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(10),
            allowed_hosts: AllowedHosts::default(),
            env: Vec::new(),
            files: None,
            max_output_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
        }
    }
}

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ArtifactSource {
    /// Compiled now, in this many milliseconds (nothing usable was cached).
    Compiled {
        /// Compile time.
        ms: f64,
    },
    /// Loaded from the on-disk cache.
    Cached,
    /// A cache file was there but rejected (why), so it was compiled again in `ms`.
    Rebuilt {
        /// Why the file was rejected.
        reason: String,
        /// Compile time.
        ms: f64,
    },
}

/// How a component was made ready.
#[derive(Debug, Clone)]
pub struct LoadInfo {
    /// The cache key (content hash and engine configuration).
    pub key: String,
    /// Where its machine code came from.
    pub source: ArtifactSource,
    /// Reading, verifying and mapping the artifact, plus linking, milliseconds.
    pub load_ms: f64,
    /// Running the module's `wizer-initialize` and snapshotting it (part of a compile; 0 when
    /// it has none or the artifact came from the cache), milliseconds.
    pub preinit_ms: f64,
}

impl LoadInfo {
    /// Milliseconds spent compiling (0 on a cache hit).
    pub fn compile_ms(&self) -> f64 {
        match self.source {
            ArtifactSource::Compiled { ms } | ArtifactSource::Rebuilt { ms, .. } => ms,
            ArtifactSource::Cached => 0.0,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    linker: Linker<CallState>,
    cache: ArtifactCache,
    engine_key: String,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// The pool's instance slots (the semaphore's permits when no call runs).
    pub(crate) pool_slots: usize,
    pub(crate) tick: Duration,
    max_memory_bytes: u64,
    /// Components prepared at deploy, handed to the load that follows (no second read).
    prepared: Mutex<HashMap<String, (Component, LoadInfo)>>,
    /// Drops used stores and makes instances ahead of calls, off the calls' path.
    pub(crate) recycler: Recycler,
    pub(crate) ahead: Ahead,
    /// Whether the machine has a core to spare for the recycler.
    pub(crate) load: Arc<Load>,
    /// When the engine was made: the origin of the times its functions' choosers get.
    pub(crate) born: Instant,
}

/// The WebAssembly engine; cheap to clone.
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("engine_key", &self.inner.engine_key)
            .finish_non_exhaustive()
    }
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash becomes a stable key.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl WasmEngine {
    /// An engine with a pool of `cfg.max_instances` instance slots and an epoch ticker.
    pub fn new(cfg: EngineConfig) -> Result<Self, WasmError> {
        let slots = cfg.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        // The semaphore admits `slots` instances; the pool's per-kind limits get a margin over
        // that for slots in transit (a dropped store's tables or memories still in a decommit
        // batch, or being returned by another thread when a new instance asks): without it a
        // pool of 4 slots once refused a table with 4 instances admitted ("maximum concurrent
        // limit of 16 for tables reached", a debug test run under CI).
        let margin = 64;
        pool.total_component_instances(slots)
            .total_stacks(slots)
            // Components hold several core instances (the module, adapters, shims), and
            // interpreters compiled to wasm have large tables and instances.
            .total_core_instances(slots * 8 + margin)
            .total_memories(slots * 2 + margin)
            .total_tables(slots * 4 + margin)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            .max_memories_per_module(2)
            .max_tables_per_module(4)
            .table_elements(200_000)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20)
            .max_memory_size(cfg.max_memory_bytes as usize)
            // Reset a slot by rewriting only the pages the call dirtied (found with the
            // PAGEMAP_SCAN ioctl, Linux 6.7+), keeping them resident: no madvise, no TLB
            // shootdown, and no page faults when the next call touches them. Without the
            // ioctl, the first bytes are reset with memset and the rest with madvise.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(8 << 20)
            .table_keep_resident(1 << 20)
            // Slots that do need madvise are released in batches: fewer syscalls and IPIs.
            .decommit_batch_size(16);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(if cfg.pooling {
                InstanceAllocationStrategy::Pooling(pool)
            } else {
                InstanceAllocationStrategy::OnDemand
            });
        let engine = Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))?;

        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        h.0.update(env!("CARGO_PKG_VERSION").as_bytes());
        // Artifacts of modules exporting `wizer-initialize` hold the pre-initialised code:
        // ones compiled before pre-initialisation existed must not be taken for them.
        h.0.update(b"preinit-1");
        let engine_key = hex::encode(h.0.finalize());

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;

        let cache =
            ArtifactCache::open(&cfg.cache_dir).map_err(|e| WasmError::Io(cfg.cache_dir.display().to_string(), e))?;
        let load = Arc::new(Load::new(cfg.load_aware));
        spawn_ticker(&engine, cfg.epoch_tick, Arc::clone(&load));
        let recycler =
            Recycler::start(cfg.ready_idle).map_err(|e| WasmError::Engine(format!("recycler thread: {e}")))?;
        Ok(WasmEngine {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                engine_key,
                slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
                pool_slots: slots as usize,
                tick: cfg.epoch_tick,
                max_memory_bytes: cfg.max_memory_bytes,
                prepared: Mutex::new(HashMap::new()),
                recycler,
                ahead: cfg.ahead,
                load,
                born: Instant::now(),
            }),
        })
    }

    /// The largest memory limit a function may have.
    pub fn max_memory_bytes(&self) -> u64 {
        self.inner.max_memory_bytes
    }

    /// Validate and compile the component in `path` (deploy time), using the cache when it
    /// holds a verified artifact. Says where the machine code came from. `memory_bytes`: the
    /// function's memory limit, which a pre-initialiser runs under too.
    pub fn prepare(&self, path: &Path, memory_bytes: u64) -> Result<LoadInfo, WasmError> {
        // Refused here, before the deploy records the version as active: a version the load
        // then refused would be active, and fail to restore at every start.
        self.check_memory(memory_bytes)?;
        let wasm = std::fs::read(path).map_err(|e| WasmError::Io(path.display().to_string(), e))?;
        let (component, info) = self.compile_or_load(&wasm, memory_bytes)?;
        // Linking now turns a missing import into a deploy error instead of a call error.
        self.link(&component)?;
        self.inner
            .prepared
            .lock()
            .expect("prepared lock")
            .insert(info.key.clone(), (component, info.clone()));
        Ok(info)
    }

    /// Make the component in `path` ready to serve calls with `limits`.
    pub fn load(&self, path: &Path, limits: Limits) -> Result<WasmFunction, WasmError> {
        self.check_memory(limits.memory_bytes)?;
        let started = Instant::now();
        let wasm = std::fs::read(path).map_err(|e| WasmError::Io(path.display().to_string(), e))?;
        let key = self.artifact_key(&wasm, limits.memory_bytes);
        let prepared = self.inner.prepared.lock().expect("prepared lock").remove(&key);
        let (component, info) = match prepared {
            Some(p) => p,
            None => self.compile_or_load(&wasm, limits.memory_bytes)?,
        };
        let pre = self.link(&component)?;
        let info = LoadInfo {
            load_ms: if info.source == ArtifactSource::Cached {
                started.elapsed().as_secs_f64() * 1000.0
            } else {
                info.load_ms
            },
            ..info
        };
        Ok(WasmFunction {
            function: Arc::new(Function {
                pre,
                limits,
                inner: Arc::clone(&self.inner),
                stash: Stash::default(),
                chooser: Mutex::default(),
                inflight: Default::default(),
                calls: Default::default(),
                ahead_slow: Default::default(),
            }),
            info,
        })
    }

    fn check_memory(&self, memory_bytes: u64) -> Result<(), WasmError> {
        if memory_bytes > self.inner.max_memory_bytes {
            return Err(WasmError::Limits(format!(
                "memory = {memory_bytes} bytes is over the wasm tier's maximum of {} bytes",
                self.inner.max_memory_bytes
            )));
        }
        Ok(())
    }

    /// The cache key of `wasm`'s machine code: its content and the engine's configuration,
    /// and for a module pre-initialised at deploy also the memory limit its initialiser ran
    /// under (a snapshot made with more memory than a function has would fail its every call).
    fn artifact_key(&self, wasm: &[u8], memory_bytes: u64) -> String {
        if crate::preinit::wants_preinit(wasm) {
            let engine = format!("{}/preinit-memory-{memory_bytes}", self.inner.engine_key);
            ArtifactCache::key(wasm, &engine)
        } else {
            ArtifactCache::key(wasm, &self.inner.engine_key)
        }
    }

    fn link(&self, component: &Component) -> Result<Pre, WasmError> {
        let pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(|e| WasmError::Link(format!("{e:#}")))?;
        match ProxyPre::new(pre.clone()) {
            Ok(proxy) => Ok(Pre::Proxy(proxy)),
            Err(proxy_err) => CommandPre::new(pre).map(Pre::Command).map_err(|_| {
                WasmError::Link(format!(
                    "exports neither wasi:http/incoming-handler nor wasi:cli/run: {proxy_err:#}"
                ))
            }),
        }
    }

    fn compile_or_load(&self, wasm: &[u8], memory_bytes: u64) -> Result<(Component, LoadInfo), WasmError> {
        let started = Instant::now();
        let key = self.artifact_key(wasm, memory_bytes);
        let rejected = match self.inner.cache.get(&key) {
            Lookup::Hit(artifact) => {
                // SAFETY: the bytes are an artifact this engine configuration wrote: the file's
                // header names this exact key (component hash + engine configuration) and the
                // SHA-256 of the payload matches, so it is not damaged or foreign. wasmtime
                // checks version and target compatibility again before using it.
                match unsafe { Component::deserialize(&self.inner.engine, &artifact) } {
                    Ok(c) => {
                        let info = LoadInfo {
                            key,
                            source: ArtifactSource::Cached,
                            load_ms: started.elapsed().as_secs_f64() * 1000.0,
                            preinit_ms: 0.0,
                        };
                        return Ok((c, info));
                    }
                    Err(e) => Some(format!("rejected by wasmtime: {e:#}")),
                }
            }
            Lookup::Miss => None,
            Lookup::Invalid(why) => Some(why),
        };
        if let Some(why) = &rejected {
            tracing::warn!(key, why, "compiled artifact not usable; compiling again");
        }
        let compile_started = Instant::now();
        let mut preinit_ms = 0.0;
        let preinitialized;
        let wasm = if crate::preinit::wants_preinit(wasm) {
            let t = Instant::now();
            preinitialized = crate::preinit::preinitialize(wasm, memory_bytes, crate::preinit::INIT_LIMIT)?;
            preinit_ms = t.elapsed().as_secs_f64() * 1000.0;
            &preinitialized[..]
        } else {
            wasm
        };
        let wasm = adapt(wasm)?;
        let artifact = self
            .inner
            .engine
            .precompile_component(&wasm)
            .map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
        let ms = compile_started.elapsed().as_secs_f64() * 1000.0;
        if let Err(e) = self.inner.cache.put(&key, &artifact) {
            tracing::warn!(key, "could not cache compiled artifact: {e}");
        }
        let load_started = Instant::now();
        // SAFETY: `artifact` was produced just now by `precompile_component` of this engine.
        let component = unsafe { Component::deserialize(&self.inner.engine, &artifact) }
            .map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
        let source = match rejected {
            Some(reason) => ArtifactSource::Rebuilt { reason, ms },
            None => ArtifactSource::Compiled { ms },
        };
        let info = LoadInfo {
            key,
            source,
            load_ms: load_started.elapsed().as_secs_f64() * 1000.0,
            preinit_ms,
        };
        Ok((component, info))
    }
}

/// Components pass through; a core module (a `wasm32-wasip1` command) is wrapped into a
/// `wasi:cli/command` component with the preview-1 adapter that matches this wasmtime.
fn adapt(wasm: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, WasmError> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    };
    if is_component(wasm) {
        return Ok(std::borrow::Cow::Borrowed(wasm));
    }
    if !wasm.starts_with(b"\0asm") {
        return Err(WasmError::Invalid("not a WebAssembly file (no \\0asm header)".into()));
    }
    let component = wit_component::ComponentEncoder::default()
        .module(wasm)
        .and_then(|e| {
            e.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
            )
        })
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| {
            WasmError::Invalid(format!(
                "a core module that cannot be adapted to a component (is it a wasm32-wasip1 command?): {e:#}"
            ))
        })?;
    Ok(std::borrow::Cow::Owned(component))
}

/// A component's preamble: magic, then version 0x0d and layer 1.
fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm.starts_with(b"\0asm") && wasm[6..8] == [1, 0]
}

/// How often the machine's load is sampled.
const LOAD_SAMPLE: Duration = Duration::from_millis(100);

/// Advance the engine's epoch every `tick` until the engine is gone; sample the machine's
/// load every [`LOAD_SAMPLE`].
fn spawn_ticker(engine: &Engine, tick: Duration, load: Arc<Load>) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            let mut sampled = Instant::now();
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                if sampled.elapsed() >= LOAD_SAMPLE {
                    load.sample();
                    sampled = Instant::now();
                }
                std::thread::sleep(tick);
            }
        })
        .expect("spawn epoch thread");
}

/// A linked component, by the world it exports.
#[derive(Clone)]
pub(crate) enum Pre {
    /// `wasi:http/proxy`: the request and response as `wasi:http` resources.
    Proxy(ProxyPre<CallState>),
    /// `wasi:cli/command`: the body on stdin, the response body on stdout.
    Command(CommandPre<CallState>),
}

/// A component ready to serve calls.
pub struct WasmFunction {
    pub(crate) function: Arc<Function>,
    info: LoadInfo,
}

impl std::fmt::Debug for WasmFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmFunction")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl WasmFunction {
    /// How it was made ready.
    pub fn info(&self) -> &LoadInfo {
        &self.info
    }

    /// Its calls in flight (counted out however a call ends, a dropped one included).
    pub fn inflight(&self) -> u32 {
        self.function.inflight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether it is a command module (body on stdin, response on stdout).
    pub fn is_command(&self) -> bool {
        matches!(self.function.pre, Pre::Command(_))
    }

    /// Ask the engine's recycler for this function's next instance now, whatever the load
    /// (calls ask for it themselves when a core is spare). Nothing for a command module or
    /// when the engine makes nothing ahead.
    pub fn prepare_next(&self) {
        if self.function.makes_ahead() {
            self.function.ask_next();
        }
    }

    /// Whether an instance made ahead waits for the next call.
    pub fn has_ready(&self) -> bool {
        self.function.stash.has_ready()
    }
}
