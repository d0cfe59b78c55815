//! The runtime templates instances are forked from (one per runtime that has one: Python).
//!
//! A template is started once, kept while it lives, and restarted on demand after it died;
//! after a start that failed, the next attempt waits [`RESTART_BACKOFF`]. While none is
//! available, instances start from scratch.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_sandbox::{Backend, Template};

/// The least time between a failed attempt to start a template and the next.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(5);

/// Runtime templates of one daemon.
pub struct Templates {
    backend: Backend,
    /// `zygote.py` in the host's runtime folder.
    python_zygote: PathBuf,
    python: Mutex<Slot>,
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
        }
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
