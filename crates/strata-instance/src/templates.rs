//! The templates instances are forked from.
//!
//! A **runtime template** (one per runtime that has one: Python) has the runtime and the
//! bootstrap loaded, never a function's code. It is started once, kept while it lives, and
//! restarted on demand after it died; after a start that failed, the next attempt waits
//! [`RESTART_BACKOFF`]. While none is available, instances start from scratch.
//!
//! A **function template** (one per function version, Python) is a sandbox of the function,
//! forked from the runtime template, that has imported the handler and its dependencies once
//! and forks the function's instances (see `strata_sandbox::ForkServer` and
//! runtimes/python/fntemplate.py): a scale-out or a cold start after the first skips the
//! import. It is started by the first cold start of the version (concurrent cold starts wait
//! for the same one, so a burst pays one import), lives while any of its instances lives, and
//! is stopped once it has forked nothing for [`FunctionTemplates::idle`]. A version whose
//! template cannot be made (its import starts threads, for one) starts its instances from the
//! runtime template.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_sandbox::{Backend, ForkServer, SandboxSpec, Template};

/// The least time between a failed attempt to start a template and the next.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(5);

/// Runtime templates of one daemon.
pub struct Templates {
    backend: Backend,
    /// `zygote.py` in the host's runtime folder.
    python_zygote: PathBuf,
    python: Mutex<Slot>,
    /// Function templates; `None`: instances fork from the runtime template only.
    functions: Option<FunctionTemplates>,
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Template>>,
    last_attempt: Option<Instant>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("python_zygote", &self.python_zygote)
            .finish()
    }
}

impl Templates {
    /// Templates started from the runtime folder `runtime_dir` (with `python/zygote.py`).
    pub fn new(backend: Backend, runtime_dir: &std::path::Path) -> Self {
        Templates {
            backend,
            python_zygote: runtime_dir.join("python").join("zygote.py"),
            python: Mutex::new(Slot::default()),
            functions: None,
        }
    }

    /// Also keep function templates, each stopped after `idle` without forking.
    pub fn with_function_templates(mut self, idle: Duration) -> Self {
        self.functions = Some(FunctionTemplates::new(self.backend.clone(), idle));
        self
    }

    /// The function templates, when kept.
    pub fn functions(&self) -> Option<&FunctionTemplates> {
        self.functions.as_ref()
    }

    /// The Python template: the running one, or a new one if it is gone and the back-off
    /// allows. Blocks while a template starts (~0.1–0.3 s); call it off the async runtime.
    pub fn python(&self) -> Option<Arc<Template>> {
        let mut slot = self.python.lock().expect("template slot lock");
        if let Some(t) = &slot.current {
            if t.is_alive() {
                return Some(Arc::clone(t));
            }
            tracing::warn!("the Python runtime template died; restarting it");
            slot.current = None;
        }
        if slot.last_attempt.is_some_and(|t| t.elapsed() < RESTART_BACKOFF) {
            return None;
        }
        slot.last_attempt = Some(Instant::now());
        match self.backend.start_template(
            "python",
            std::path::Path::new("/usr/bin/python3"),
            &["-I".into(), "-S".into(), self.python_zygote.display().to_string()],
            &[],
            Duration::from_secs(30),
        ) {
            Ok(t) => {
                tracing::info!(pid = t.pid(), "Python runtime template ready");
                let t = Arc::new(t);
                // The back-off is for starts that fail: after a good start, a template that
                // dies is replaced at once.
                slot.last_attempt = None;
                slot.current = Some(Arc::clone(&t));
                Some(t)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no Python runtime template; Python instances start from scratch");
                None
            }
        }
    }
}

/// How long a function template that forks nothing is kept by default.
pub const FUNCTION_TEMPLATE_IDLE: Duration = Duration::from_secs(600);

/// The function templates of one daemon, by function version.
pub struct FunctionTemplates {
    backend: Backend,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<FnSlot>>>>,
    /// A template that has forked nothing for this long is stopped (once no instance of it
    /// is left).
    pub idle: Duration,
}

#[derive(Default)]
struct FnSlot {
    server: Option<Arc<ForkServer>>,
    last_used: Option<Instant>,
    /// Why this version has no template (a failure other than the handler's import).
    unusable: Option<String>,
    /// The last failed start and when: callers within [`RETRY_AFTER`] get its outcome instead
    /// of each starting (and failing) again, one after the other.
    failed: Option<(Instant, Option<String>)>,
}

/// How long a failed function-template start answers for the next callers.
const RETRY_AFTER: Duration = Duration::from_secs(2);

impl std::fmt::Debug for FunctionTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionTemplates").field("idle", &self.idle).finish()
    }
}

/// What [`FunctionTemplates::get`] found.
pub enum FunctionTemplate {
    /// A running template; `started`: this call started it, taking this long, of which
    /// the import took `import_ms`.
    Ready {
        /// The template.
        server: Arc<ForkServer>,
        /// (start-up time, import ms) when this call started it.
        started: Option<(Duration, f64)>,
    },
    /// The handler failed to load (the message says why): the instance would fail the same.
    InitError(String),
    /// No template for this version: start the instance another way.
    Unavailable,
}

impl FunctionTemplates {
    /// An empty set.
    pub fn new(backend: Backend, idle: Duration) -> Self {
        FunctionTemplates {
            backend,
            slots: Mutex::new(HashMap::new()),
            idle,
        }
    }

    /// The template of `key` (a function version), started from `spec` (a sandbox spec of the
    /// function running the runtime's function template program) through the runtime
    /// template `runtime` gives (called, on a blocking thread, only when a template must be
    /// started) when there is none, its memory limit raised to `memory_after_load` once it has
    /// loaded. Concurrent callers for one key wait for the same start.
    pub async fn get(
        &self,
        key: &str,
        runtime: impl FnOnce() -> Option<Arc<Template>> + Send + 'static,
        spec: impl FnOnce() -> std::io::Result<SandboxSpec>,
        startup: Duration,
        memory_after_load: u64,
    ) -> FunctionTemplate {
        self.sweep();
        let slot = {
            let mut slots = self.slots.lock().expect("template slots lock");
            if !slots.contains_key(key) {
                // A new version of the function: its older versions' templates go (each
                // process ends with the last instance forked from it).
                let function = key.rsplit_once('@').map_or(key, |(f, _)| f);
                slots.retain(|k, _| k.rsplit_once('@').map_or(k.as_str(), |(f, _)| f) != function);
            }
            Arc::clone(slots.entry(key.to_owned()).or_default())
        };
        let mut slot = slot.lock().await;
        slot.last_used = Some(Instant::now());
        if slot.unusable.is_some() {
            return FunctionTemplate::Unavailable;
        }
        if let Some((at, init_error)) = &slot.failed
            && at.elapsed() < RETRY_AFTER
        {
            return match init_error {
                Some(message) => FunctionTemplate::InitError(message.clone()),
                None => FunctionTemplate::Unavailable,
            };
        }
        if let Some(server) = &slot.server {
            if server.is_alive() {
                return FunctionTemplate::Ready {
                    server: Arc::clone(server),
                    started: None,
                };
            }
            tracing::warn!(function = key, "the function template died; starting another");
            slot.server = None;
        }
        let spec = match spec() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(function = key, error = %e, "no function template");
                return FunctionTemplate::Unavailable;
            }
        };
        let backend = self.backend.clone();
        let name = key.to_owned();
        let t0 = Instant::now();
        let started =
            tokio::task::spawn_blocking(move || backend.start_fork_server(&name, runtime().as_ref(), spec, startup))
                .await;
        let (server, hello) = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // A broken runtime template or a start that timed out: try again later.
                tracing::warn!(function = key, error = %e, "function template did not start");
                slot.failed = Some((Instant::now(), None));
                return FunctionTemplate::Unavailable;
            }
            Err(e) => {
                tracing::warn!(function = key, error = %e, "function template start panicked");
                slot.failed = Some((Instant::now(), None));
                return FunctionTemplate::Unavailable;
            }
        };
        if hello["ready"] == true {
            slot.failed = None;
            // The import ran under the function's own limit; from now on the template's group
            // also carries what its instances' kernel allocates before they move to theirs.
            if let Err(e) = server.set_memory_limit(memory_after_load) {
                tracing::warn!(function = key, error = %e, "cannot raise the function template's memory limit");
            }
            let server = Arc::new(server);
            slot.server = Some(Arc::clone(&server));
            let import_ms = hello["import_ms"].as_f64().unwrap_or(0.0);
            tracing::info!(function = key, pid = server.pid(), import_ms, "function template ready");
            return FunctionTemplate::Ready {
                server,
                started: Some((t0.elapsed(), import_ms)),
            };
        }
        if let Some(msg) = hello["init_error"].as_str() {
            slot.failed = Some((Instant::now(), Some(msg.to_owned())));
            return FunctionTemplate::InitError(msg.to_owned());
        }
        let why = hello["error"].as_str().unwrap_or("unexpected greeting").to_owned();
        tracing::warn!(function = key, error = %why, "this function version gets no template");
        slot.unusable = Some(why);
        FunctionTemplate::Unavailable
    }

    /// Forget a template whose fork failed in a way that says it is broken.
    pub fn discard(&self, key: &str, server: &Arc<ForkServer>) {
        server.kill();
        let slot = self.slots.lock().expect("template slots lock").get(key).cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && slot.server.as_ref().is_some_and(|s| Arc::ptr_eq(s, server))
        {
            slot.server = None;
        }
    }

    /// Stop templates that have forked nothing for [`FunctionTemplates::idle`]: the slot's
    /// reference goes; the process ends when the last instance forked from it does.
    pub fn sweep(&self) {
        let mut slots = self.slots.lock().expect("template slots lock");
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(s) => s.last_used.is_some_and(|t| t.elapsed() < self.idle),
            Err(_) => true, // in use right now
        });
    }
}
