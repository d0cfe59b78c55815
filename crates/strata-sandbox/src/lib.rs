//! The process sandbox: a lean Linux container for one function instance (layer 1,
//! Virtualization).
//!
//! In the spirit of SOCK, a sandbox is only a root filesystem, communication channels and
//! isolation boundaries; nothing of an image-based container runtime. [`Backend::spawn`]
//! clones straight into new pid, mount, ipc and uts namespaces, joins a fresh cgroup and
//! cgroup namespace, enters a pooled network namespace, finishes a read-only root, pivots into
//! it, drops every privilege and execs. The child shares the parent's memory until exec
//! (`CLONE_VM | CLONE_VFORK`), so starting a sandbox copies no page tables.
//!
//! The part of the root every sandbox shares (the tmpfs of mount points, the read-only binds of
//! the runtime directories and /etc, the device nodes) is a *root template*, built once in the
//! spawner thread's own mount namespace. A sandbox's new mount namespace is a copy of that
//! one, so it starts with the template and only adds its own mounts: its code, /tmp, /proc.
//! The template's tmpfs is shared by all sandboxes but holds only empty mount points and
//! device nodes, and each sandbox sees it read-only.
//!
//! # Threat model
//! The adversary is the function's code: arbitrary native code running as the sandbox's
//! process. What it is kept from:
//! - **Other processes**: its own pid namespace (it is pid 1 and sees only its descendants);
//!   `ptrace`, `process_vm_*` and `kcmp` are denied anyway.
//! - **The host filesystem**: the root is a private tmpfs holding read-only, nosuid, nodev bind
//!   mounts of /usr, /lib*, a minimal generated /etc (plus /etc/ssl for TLS roots), the code
//!   folder at `/code` and runtime folders the caller adds. Writable are only a size-limited
//!   /tmp and /dev/{null,zero,full,random,urandom}. No host /sys, no /dev/kvm, no daemon
//!   sockets. The old root is detached after `pivot_root`.
//! - **Privilege**: it runs as an unprivileged uid/gid (default `nobody`), with empty
//!   effective, permitted, inheritable, ambient and bounding capability sets, `no_new_privs`,
//!   and a seccomp filter that denies mounting, namespace creation and entry (`unshare`,
//!   `setns`, namespace flags on `clone`; `clone3` reports ENOSYS so libc falls back to
//!   `clone`), module loading, kexec, BPF, perf events, keyrings, reboot, swap, handle-based
//!   opens, userfaultfd, raw I/O ports, io_uring, clock setting and x32 system calls.
//!   [`SeccompMode`] picks EPERM (default) or killing the process.
//! - **Resources**: a cgroup (v1 or v2, detected) caps memory (no swap on top; an OOM kill is
//!   reported as [`ExitKind::Oom`]), CPU ([`Limits::cpu_millis`], CFS quota) and pids (a fork
//!   bomb stops at [`Limits::pids`]); rlimits cap open files and file size, core dumps are off.
//! - **The network**: with [`NetworkMode::None`] (the default) it has a namespace of its own
//!   with only loopback, not shared with any other sandbox; [`NetworkMode::Host`] is opt-in.
//! - **Outliving its owner**: every process dies when the daemon dies (`PR_SET_PDEATHSIG` on
//!   the pid namespace's init); groups left by a killed daemon are removed on the next start.
//!
//! What it does **not** protect against: the kernel is shared, so a kernel bug reachable
//! through the allowed system calls is an escape (the microVM tier is for that);
//! micro-architectural side channels (Spectre-class, cache timing) between co-located
//! sandboxes; denial of service through shared resources no cgroup here limits (disk I/O
//! bandwidth, kernel memory outside the memory controller's accounting, the page cache of the
//! shared read-only files). The files under the bound host directories are readable by the
//! function: do not put secrets there.
//!
//! # Knobs
//! [`SandboxSpec`] per sandbox: program, args, env (nothing inherited), cwd, code folder, extra
//! read-only mounts, [`Limits`], [`NetworkMode`], descriptors to pass, [`SeccompMode`], uid,
//! gid, hostname. [`BackendConfig`] per host: the run directory, the network-namespace and
//! cgroup pool sizes, `favordynmods`, and the root template (on by default; off, every sandbox
//! assembles its whole root).
//!
//! The kernel sits behind narrow seams so the orchestration is unit-tested without root: the
//! mount plan is data ([`plan::build`]) carried out through [`kernel::Kernel`], and cgroup
//! files go through [`cgroup::CgroupFs`]. The real backend is tested against the real kernel
//! in `tests/`.

mod backend;
mod cgpool;
pub mod cgroup;
mod child;
mod error;
mod fork;
pub mod kernel;
pub mod netns;
pub mod plan;
mod sandbox;
pub mod seccomp;
mod spec;
mod template;

pub use backend::{Backend, BackendConfig};
pub use error::{Result, SandboxError};
pub use fork::ForkServer;
pub use sandbox::Sandbox;
pub use spec::{
    BindMount, CODE_DIR, DEFAULT_UID, Exit, ExitKind, FdMapping, Limits, NetworkMode, SandboxSpec, SeccompMode,
    SpawnTimings, Usage,
};
pub use template::Template;
