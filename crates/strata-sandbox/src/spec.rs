//! What a sandbox is made from: the spec a caller fills in.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

/// Everything needed to start one sandboxed process.
#[derive(Debug)]
pub struct SandboxSpec {
    /// Absolute path of the executable, as seen inside the sandbox.
    pub program: PathBuf,
    /// argv, including `argv[0]`.
    pub args: Vec<String>,
    /// The complete environment of the process (nothing is inherited from the host).
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// Host folder mounted read-only at [`CODE_DIR`] (the function's code).
    pub code: Option<PathBuf>,
    /// Additional read-only bind mounts (host path → sandbox path).
    pub mounts: Vec<BindMount>,
    /// Resource limits, enforced through cgroups and rlimits.
    pub limits: Limits,
    /// Network access.
    pub network: NetworkMode,
    /// With `NetworkMode::None`: sandboxes with the same key may reuse each other's network
    /// namespace once they have exited (every process in it gone), which saves making and
    /// destroying one per sandbox. Only kernel state outlives a sandbox there (connections
    /// closed in TIME_WAIT, interface counters), so give one key per function version, never
    /// one shared across tenants. `None`: a fresh namespace every time.
    pub netns_key: Option<String>,
    /// File descriptors handed to the process: `target` is the fd number it sees.
    /// Targets 0, 1 and 2 that are not given are connected to `/dev/null`.
    pub fds: Vec<FdMapping>,
    /// What the seccomp filter does with a denied system call.
    pub seccomp: SeccompMode,
    /// Host uid/gid the process runs as. Never 0.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Hostname inside the sandbox's UTS namespace.
    pub hostname: String,
}

/// Where the function's code folder appears inside every sandbox.
pub const CODE_DIR: &str = "/code";

/// The uid and gid sandboxes run as unless the spec says otherwise: `nobody`, which owns no
/// file on the host.
pub const DEFAULT_UID: u32 = 65534;

impl SandboxSpec {
    /// A copy with duplicated descriptors (to start the same sandbox another way after one
    /// failed).
    pub fn try_clone(&self) -> std::io::Result<SandboxSpec> {
        Ok(SandboxSpec {
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            code: self.code.clone(),
            mounts: self.mounts.clone(),
            limits: self.limits.clone(),
            network: self.network,
            netns_key: self.netns_key.clone(),
            fds: self
                .fds
                .iter()
                .map(|m| {
                    Ok(FdMapping {
                        fd: m.fd.try_clone()?,
                        target: m.target,
                    })
                })
                .collect::<std::io::Result<_>>()?,
            seccomp: self.seccomp,
            uid: self.uid,
            gid: self.gid,
            hostname: self.hostname.clone(),
        })
    }

    /// A spec running `program` with `args` and safe defaults for everything else.
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        let program = program.into();
        let args = if args.is_empty() {
            vec![program.display().to_string()]
        } else {
            args
        };
        let mut env = BTreeMap::new();
        env.insert("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned());
        env.insert("HOME".to_owned(), "/tmp".to_owned());
        env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
        SandboxSpec {
            program,
            args,
            env,
            cwd: PathBuf::from("/"),
            code: None,
            mounts: Vec::new(),
            limits: Limits::default(),
            network: NetworkMode::None,
            netns_key: None,
            fds: Vec::new(),
            seccomp: SeccompMode::Errno,
            uid: DEFAULT_UID,
            gid: DEFAULT_UID,
            hostname: "strata".to_owned(),
        }
    }
}

/// A read-only bind mount of a host path into the sandbox.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// Host path (a directory or a file).
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
}

/// A file descriptor passed into the sandbox.
#[derive(Debug)]
pub struct FdMapping {
    /// The parent's descriptor; it is closed in the parent once the sandbox has started.
    pub fd: OwnedFd,
    /// The descriptor number inside the sandbox.
    pub target: i32,
}

/// Resource limits of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit (cgroup), bytes. Swap is not allowed on top of it.
    pub memory_bytes: u64,
    /// CPU quota in millicores (1000 = one full core); `None` = unlimited.
    pub cpu_millis: Option<u32>,
    /// Maximum number of processes and threads (cgroup pids controller).
    pub pids: u32,
    /// Size of the writable tmpfs at /tmp, bytes.
    pub tmp_bytes: u64,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE: the largest file the process may write, bytes.
    pub fsize_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // 128 MiB: the smallest Lambda-style size that runs a Python or Node runtime.
            memory_bytes: 128 << 20,
            cpu_millis: None,
            // 64: enough for a runtime's threads plus a few helper processes, far below what
            // would let a fork bomb hurt the host.
            pids: 64,
            // 64 MiB: scratch space; it is charged to the memory cgroup as it is used.
            tmp_bytes: 64 << 20,
            // 1024: the usual soft limit on Linux desktops and servers.
            nofile: 1024,
            // Files are only writable under /tmp, so its size is the natural cap.
            fsize_bytes: 64 << 20,
        }
    }
}

/// Network access of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A network namespace of its own with only loopback up: nothing outside is reachable.
    #[default]
    None,
    /// The host's network namespace (explicit opt-in).
    Host,
}

/// What happens when the process makes a denied system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// The call fails with `EPERM`; the process lives on.
    #[default]
    Errno,
    /// The whole process is killed with SIGSYS.
    Kill,
    /// A function template's filter (see `crate::fork`): like `Errno`, but `mount`,
    /// `unshare` and the namespace flags of `clone` other than `CLONE_NEWUSER` are allowed.
    /// The template runs in a user namespace of its own, where those calls only reach
    /// namespaces it owns; every instance it forks stacks the strict filter on top.
    Forker,
}

/// Per-phase timings of a sandbox start, for cold-start breakdowns.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpawnTimings {
    /// Creating the cgroup and writing its limits.
    pub cgroup: Duration,
    /// Taking a network namespace from the pool (or creating one if the pool is empty).
    pub netns: Duration,
    /// clone() into the new namespaces until the child runs.
    pub namespaces: Duration,
    /// Assembling the root filesystem and pivoting into it.
    pub mounts: Duration,
    /// Dropping privileges, installing seccomp, arranging descriptors.
    pub privileges: Duration,
    /// execve until it returned to the parent.
    pub exec: Duration,
    /// The whole spawn call.
    pub total: Duration,
}

/// How a sandboxed process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Exited(i32),
    /// It was killed because its cgroup ran out of memory.
    Oom,
    /// It was killed by this signal (SIGSYS for a seccomp kill).
    Signaled(i32),
}

/// Resource usage of a sandbox, read from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of every process in the sandbox, microseconds.
    pub cpu_usec: u64,
    /// Peak memory, bytes.
    pub memory_peak_bytes: u64,
    /// Number of OOM kills in the sandbox's cgroup.
    pub oom_kills: u64,
}

/// The end of a sandbox: how it exited and what it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// How the process ended.
    pub kind: ExitKind,
    /// What it used over its whole life.
    pub usage: Usage,
}
