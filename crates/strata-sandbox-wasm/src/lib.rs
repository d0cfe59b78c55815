//! The WebAssembly tier of the Virtualization layer: functions compiled to `wasi:http/proxy`
//! components, run in wasmtime with a fresh instance per request.
//!
//! - **Compile once.** [`WasmEngine::prepare`] validates a component and compiles it ahead of
//!   time; the artifact is cached on disk under the component's content hash and the
//!   engine's configuration ([`cache`]), so a restart loads machine code instead of
//!   compiling. Damaged or foreign cache files are detected and rebuilt, never loaded.
//! - **Initialise once.** A core module that exports `wizer-initialize` has it run at deploy
//!   and its state snapshotted into the module ([`preinit`], wasmtime-wizer), so expensive
//!   set-up is not redone by every fresh instance.
//! - **Instantiate per request.** [`WasmFunction::call`] creates a store and an instance from
//!   an `InstancePre` on the pooling allocator (copy-on-write memory images), runs
//!   `wasi:http/incoming-handler.handle`, and drops both. Nothing survives from one call to
//!   the next. While the machine has a core to spare, the engine's recycler thread
//!   (`recycle.rs`) makes a function's next instance ahead of its call and drops used ones,
//!   so the call waits for the guest's run only.
//! - **Limits.** Epoch interruption stops a guest at its timeout (it yields to the executor
//!   at every tick, so a spinning guest does not starve others); a resource limiter caps
//!   linear memory and tables; outbound HTTP goes only to `allowed_outbound_hosts`
//!   (`strata_types::hosts`); sockets and name lookups are denied; there is no filesystem unless a
//!   folder is granted read-only.
//!
//! Only this crate depends on wasmtime: the rest of the workspace builds without it, and the
//! `strata` binary plugs this tier into the orchestrator.

pub mod cache;
mod call;
mod capture;
mod choose;
mod engine;
pub mod preinit;
mod quota;
mod recycle;

pub use call::{CallError, CallReport, HttpCall, Reply};
pub use engine::{Ahead, ArtifactSource, EngineConfig, Limits, LoadInfo, WasmEngine, WasmFunction};
pub use strata_types::{AllowedHosts, BadHost};

/// Why a component could not be prepared or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// Not a valid WebAssembly component (or module we can adapt).
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component needs something the host does not provide.
    #[error("cannot link component: {0}")]
    Link(String),
    /// The limits asked for are outside what the engine allows.
    #[error("{0}")]
    Limits(String),
    /// Reading the component or the cache failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The engine could not be set up.
    #[error("engine: {0}")]
    Engine(String),
}
