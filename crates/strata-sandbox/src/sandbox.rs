//! One running sandbox: wait for it, kill it, account for it, tear it down.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::backend::Inner;
use crate::cgroup::Cgroup;
use crate::error::{Result, SandboxError};
use crate::spec::{Exit, ExitKind, SpawnTimings, Usage};

/// A running (or finished, not yet torn down) sandbox. Dropping it kills and removes it.
pub struct Sandbox {
    inner: Arc<Inner>,
    pid: i32,
    pidfd: OwnedFd,
    cgroup: Cgroup,
    exit: Option<Exit>,
    pub(crate) timings: SpawnTimings,
    /// Control files kept open for [`Sandbox::live_usage`]: opening a cgroup file walks its
    /// path every time, which costs more than reading it.
    live: std::sync::OnceLock<Option<LiveFiles>>,
    /// The network namespace and its reuse key, given back to the pool at teardown.
    pub(crate) netns: Option<(String, OwnedFd)>,
    /// For a sandbox forked by a function template (not the daemon's child, so `waitid`
    /// cannot reap it): the read end of the pipe on which the template, its reaper, writes
    /// the wait status. End of file without a status: the template died, and the kernel
    /// killed the sandbox with it.
    pub(crate) exit_pipe: Option<OwnedFd>,
    /// What must live as long as the sandbox (its function template).
    pub(crate) keep: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

struct LiveFiles {
    cpu: std::fs::File,
    cpu_is_v2: bool,
    peak: std::fs::File,
}

fn pread_text<'b>(f: &std::fs::File, buf: &'b mut [u8]) -> &'b str {
    use std::os::unix::fs::FileExt;
    let n = f.read_at(buf, 0).unwrap_or(0);
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("pid", &self.pid)
            .field("cgroup", &self.cgroup.name())
            .finish()
    }
}

impl Sandbox {
    pub(crate) fn new(inner: Arc<Inner>, pid: i32, pidfd: OwnedFd, cgroup: Cgroup) -> Self {
        Sandbox {
            inner,
            pid,
            pidfd,
            cgroup,
            exit: None,
            timings: SpawnTimings::default(),
            live: std::sync::OnceLock::new(),
            netns: None,
            exit_pipe: None,
            keep: None,
        }
    }

    /// The host pid of the sandbox's first process (pid 1 inside).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd of the first process: readable once it has exited (for async waiting).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// How long each phase of the start took.
    pub fn timings(&self) -> SpawnTimings {
        self.timings
    }

    /// The cgroup's name (under `strata/`).
    pub fn cgroup_name(&self) -> &str {
        self.cgroup.name()
    }

    /// Current resource usage.
    pub fn usage(&self) -> Usage {
        self.cgroup.usage(self.inner.fs.as_ref())
    }

    /// CPU time (µs) and peak memory (bytes) so far, read cheaply from kept-open files: for
    /// per-call accounting on the hot path.
    pub fn live_usage(&self) -> (u64, u64) {
        // Opened on first use, not at spawn: a sandbox that is never asked pays nothing.
        let live = self.live.get_or_init(|| {
            let (cpu, cpu_is_v2, peak) = self.cgroup.live_usage_files();
            match (std::fs::File::open(cpu), std::fs::File::open(peak)) {
                (Ok(cpu), Ok(peak)) => Some(LiveFiles { cpu, cpu_is_v2, peak }),
                _ => None,
            }
        });
        let Some(l) = live else {
            let u = self.usage();
            return (u.cpu_usec, u.memory_peak_bytes);
        };
        let mut buf = [0u8; 512];
        let cpu = if l.cpu_is_v2 {
            crate::cgroup::first_number(pread_text(&l.cpu, &mut buf), "usage_usec").unwrap_or(0)
        } else {
            pread_text(&l.cpu, &mut buf).trim().parse::<u64>().unwrap_or(0) / 1000
        };
        let peak = pread_text(&l.peak, &mut buf).trim().parse().unwrap_or(0);
        (cpu, peak)
    }

    /// Change the memory limit of the running sandbox's cgroup from `limits` (what it has) to
    /// `bytes`.
    pub(crate) fn set_memory_limit(&self, limits: &crate::spec::Limits, bytes: u64) -> Result<()> {
        let to = crate::spec::Limits {
            memory_bytes: bytes,
            ..limits.clone()
        };
        self.inner
            .hierarchy
            .apply_limits(self.inner.fs.as_ref(), &self.cgroup, limits, &to)
    }

    /// Pids (host view) of every process in the sandbox.
    pub fn pids(&self) -> Vec<i32> {
        self.cgroup.pids(self.inner.fs.as_ref())
    }

    /// SIGKILL the sandbox: its first process is the init of its pid namespace, so the
    /// kernel kills every other process in it too; the cgroup is swept for good measure.
    pub fn kill(&self) {
        if self.exit.is_none() {
            // SAFETY: pidfd_send_signal on our own pidfd; no memory is passed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    0usize,
                    0u32,
                );
            }
            self.cgroup.kill_all(self.inner.fs.as_ref());
        }
    }

    /// Send a signal to the first process.
    pub fn signal(&self, sig: i32) -> Result<()> {
        // SAFETY: as in `kill`.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), sig, 0usize, 0u32) };
        if rc < 0 {
            Err(SandboxError::sys("pidfd_send_signal"))
        } else {
            Ok(())
        }
    }

    /// Has it exited? Never blocks. Once it has, the sandbox is torn down.
    pub fn try_wait(&mut self) -> Result<Option<Exit>> {
        self.reap(libc::WNOHANG)
    }

    /// Wait for the sandbox to exit, then tear it down.
    pub fn wait(&mut self) -> Result<Exit> {
        self.reap(0)?.ok_or_else(|| SandboxError::Sys {
            op: "waitid",
            source: std::io::ErrorKind::WouldBlock.into(),
        })
    }

    /// Kill, wait and tear down.
    pub fn terminate(&mut self) -> Result<Exit> {
        self.kill();
        self.wait()
    }

    fn reap(&mut self, flags: i32) -> Result<Option<Exit>> {
        if let Some(e) = self.exit {
            return Ok(Some(e));
        }
        if let Some(pipe) = &self.exit_pipe {
            // Not our child: its pidfd still says when it has exited, and the status follows
            // from the template that reaps it (or, if none comes, it was killed).
            if !readable(&self.pidfd, flags & libc::WNOHANG != 0)? {
                return Ok(None);
            }
            let kind = read_status(pipe);
            let usage = self.teardown();
            let kind = match kind {
                ExitKind::Signaled(libc::SIGKILL) if usage.oom_kills > 0 => ExitKind::Oom,
                k => k,
            };
            let exit = Exit { kind, usage };
            self.exit = Some(exit);
            self.keep.take();
            return Ok(Some(exit));
        }
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waitid on our pidfd (P_PIDFD = 3) with a valid siginfo pointer.
            let rc = unsafe {
                libc::waitid(
                    3 as libc::idtype_t,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | flags,
                )
            };
            if rc == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(SandboxError::Sys {
                    op: "waitid",
                    source: e,
                });
            }
        }
        // SAFETY: after a successful waitid the pid field is initialised (0 = nothing yet).
        if unsafe { info.si_pid() } == 0 {
            return Ok(None);
        }
        // SAFETY: as above.
        let status = unsafe { info.si_status() };
        let code = info.si_code;
        let usage = self.teardown();
        let kind = if code == libc::CLD_EXITED {
            ExitKind::Exited(status)
        } else if usage.oom_kills > 0 && status == libc::SIGKILL {
            ExitKind::Oom
        } else {
            ExitKind::Signaled(status)
        };
        let exit = Exit { kind, usage };
        self.exit = Some(exit);
        Ok(Some(exit))
    }

    /// Read the final usage and remove the cgroup. The pid namespace's init has been reaped,
    /// which the kernel only allows once every other process in the namespace is gone, so the
    /// group empties promptly; the retries cover the kernel's asynchronous cgroup release.
    fn teardown(&mut self) -> Usage {
        self.live.take();
        let fs = self.inner.fs.as_ref();
        let usage = self.cgroup.usage(fs);
        // The pid namespace's init has been reaped, which the kernel allows only once every
        // other process in it is gone; the background remover still sweeps before rmdir.
        self.inner.cgroups.bury(self.cgroup.clone());
        // No process is left in the namespace (see above): the next sandbox with the same key
        // may have it.
        if let Some((key, fd)) = self.netns.take() {
            self.inner.netns.give_back(&key, fd);
        }
        usage
    }
}

/// Whether `fd` is readable, waiting for it unless `nohang`.
fn readable(fd: &OwnedFd, nohang: bool) -> Result<bool> {
    poll_in(fd, if nohang { 0 } else { -1 }).map_err(|source| SandboxError::Sys { op: "poll", source })
}

/// Poll one descriptor for input up to `ms` (-1: no limit), retrying on EINTR.
pub(crate) fn poll_in(fd: &OwnedFd, ms: i32) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How long a function template may take to report an exited sandbox's status.
const STATUS_GRACE_MS: i32 = 2000;

/// The wait status a function template wrote for its forked sandbox (see `exit_pipe`), once
/// the sandbox has exited. No status in time, or end of file (the template died, and the
/// kernel killed its pid namespace with it): killed.
fn read_status(pipe: &OwnedFd) -> ExitKind {
    let killed = ExitKind::Signaled(libc::SIGKILL);
    if !poll_in(pipe, STATUS_GRACE_MS).unwrap_or(false) {
        return killed;
    }
    let mut buf = [0u8; 4];
    // SAFETY: reading into a buffer we own; the status is written in one 4-byte write.
    let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
    if n != 4 {
        return killed;
    }
    let status = i32::from_ne_bytes(buf);
    if libc::WIFEXITED(status) {
        ExitKind::Exited(libc::WEXITSTATUS(status))
    } else {
        ExitKind::Signaled(libc::WTERMSIG(status))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.terminate();
        }
    }
}
