use std::io;
use std::path::PathBuf;

/// Errors of the process sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec cannot be run.
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// No usable cgroup hierarchy (neither v2 with controllers nor v1 memory/cpu/pids).
    #[error("no usable cgroup hierarchy: {0}")]
    NoCgroups(String),
    /// A cgroup file operation failed.
    #[error("cgroup {op} {path}: {source}")]
    Cgroup {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A setup step inside the new sandbox failed before exec.
    #[error("sandbox setup step `{step}` failed: {source}")]
    Setup {
        /// The step (see [`crate::plan::Step::name`]).
        step: String,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A system call in the parent failed.
    #[error("{op}: {source}")]
    Sys {
        /// The call.
        op: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A runtime template failed or answered nonsense.
    #[error("runtime template: {0}")]
    Template(String),
    /// The spawner thread is gone.
    #[error("sandbox spawner thread has stopped")]
    SpawnerGone,
}

impl SandboxError {
    pub(crate) fn sys(op: &'static str) -> Self {
        SandboxError::Sys {
            op,
            source: io::Error::last_os_error(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
