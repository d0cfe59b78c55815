//! What the platform remembers about each invocation and each line a function printed.

use serde::{Deserialize, Serialize};

/// Breakdown of a cold start, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStart {
    /// Creating the sandbox (namespaces, mounts, cgroup) until exec.
    pub sandbox_ms: f64,
    /// From exec until the runtime started loading the handler.
    pub runtime_init_ms: f64,
    /// Loading the handler module (import and top-level code).
    pub import_ms: f64,
    /// The whole start of the instance: from the launch until the handler was ready
    /// (sandbox, runtime init and import, and the hand-offs between them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub launch_ms: f64,
    /// Which way the instance came to be.
    #[serde(default)]
    pub path: ColdPath,
    /// Python: starting the function's template (its import included) when this cold start
    /// had to; 0 when one was running.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub template_ms: f64,
    /// wasm: compiling the component to machine code (at deploy; 0 when it came from the
    /// artifact cache).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compile_ms: f64,
    /// wasm: running the module's `wizer-initialize` and snapshotting its state, at deploy
    /// (part of `compile_ms`; 0 when it has none or the artifact came from the cache).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preinit_ms: f64,
    /// wasm: reading, verifying and mapping the compiled artifact, and linking it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub load_ms: f64,
    /// wasm: creating the store and instantiating the component.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub instantiate_ms: f64,
    /// wasm: where the machine code came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactOrigin>,
    /// Process tier: where `sandbox_ms` went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_steps: Option<SandboxSteps>,
}

/// The steps of a process sandbox's creation, milliseconds. What is left of `sandbox_ms`
/// beyond their sum is the hand-offs between the daemon, a template and the new process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxSteps {
    /// Taking a cgroup (from the pool, or made now) and writing its limits.
    pub cgroup_ms: f64,
    /// Taking a network namespace.
    pub netns_ms: f64,
    /// Making the process: clone into new namespaces, or a template's hand-over to its spare.
    pub clone_ms: f64,
    /// Inside the new process: joining the cgroup, its root filesystem.
    pub mounts_ms: f64,
    /// Inside the new process: descriptors, limits, identity, capabilities, seccomp.
    pub privileges_ms: f64,
    /// `execve` (0 for a process forked from a template).
    pub exec_ms: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// How a cold instance was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdPath {
    /// A new sandbox and a fresh runtime process.
    #[default]
    Scratch,
    /// A WebAssembly component, instantiated from its compiled artifact.
    Wasm,
    /// A new sandbox forked from the runtime's template (runtime and bootstrap loaded).
    RuntimeTemplate,
    /// A new sandbox forked from the function's template (its handler already imported).
    FunctionTemplate,
}

/// Where a wasm function's machine code came from when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactOrigin {
    /// Compiled (nothing was cached).
    Compiled,
    /// Loaded from the artifact cache: no compilation.
    Cached,
    /// A cache file was rejected (damaged or foreign) and the component compiled again.
    Rebuilt,
}

/// One invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// The call id (X-Call-Id).
    pub call_id: String,
    /// Function name.
    pub function: String,
    /// Version that served it.
    pub version: String,
    /// Start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Wall time in the platform, milliseconds.
    pub duration_ms: f64,
    /// Whether the call waited for a new instance.
    pub cold: bool,
    /// The cold start's breakdown, when cold.
    pub cold_start: Option<ColdStart>,
    /// HTTP status returned to the caller.
    pub status: u16,
    /// Error code, when the call failed on the platform's side.
    pub error: Option<String>,
    /// CPU time the instance used during the call, milliseconds (from the cgroup).
    pub cpu_ms: f64,
    /// Peak memory of the instance so far, bytes (from the cgroup).
    pub memory_peak_bytes: u64,
    /// The instance that served it.
    pub instance: Option<String>,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The function's stdout.
    Stdout,
    /// The function's stderr.
    Stderr,
    /// The platform, about the function (instance started, killed, …).
    System,
}

/// One line of a function's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the function's log, increasing.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The call it belongs to, when known.
    pub call_id: Option<String>,
    /// Stream.
    pub stream: LogStream,
    /// The text, without the newline.
    pub line: String,
}
