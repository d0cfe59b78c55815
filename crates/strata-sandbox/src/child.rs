//! The code that runs in the new sandbox between `clone` and `execve`.
//!
//! The child shares the parent's memory (`CLONE_VM | CLONE_VFORK`, like `posix_spawn`), so
//! it must not allocate, take locks or unwind: everything it needs was prepared by the parent
//! in [`ChildArgs`], and it makes raw system calls only. In particular the uid/gid changes are
//! raw syscalls: glibc's wrappers would try to broadcast them to the parent's threads.
//! Failures are reported as (step, errno) over a close-on-exec pipe.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::kernel::{self, LinuxKernel};
use crate::plan::Step;

/// Codes of the steps that are not part of the mount plan (plan steps use their index).
pub mod code {
    /// Parent-death signal.
    pub const PDEATHSIG: u32 = 1000;
    /// Joining the cgroup.
    pub const CGROUP: u32 = 1001;
    /// A new cgroup namespace.
    pub const CGROUP_NS: u32 = 1002;
    /// Entering the network namespace.
    pub const NETNS: u32 = 1003;
    /// Hostname.
    pub const HOSTNAME: u32 = 1004;
    /// Working directory.
    pub const CHDIR: u32 = 1005;
    /// Descriptors.
    pub const FDS: u32 = 1006;
    /// rlimits.
    pub const RLIMIT: u32 = 1007;
    /// Capability bounding and ambient sets.
    pub const CAPS: u32 = 1008;
    /// setgroups / setresgid / setresuid.
    pub const IDS: u32 = 1009;
    /// no_new_privs.
    pub const NO_NEW_PRIVS: u32 = 1010;
    /// Installing seccomp.
    pub const SECCOMP: u32 = 1011;
    /// execve.
    pub const EXEC: u32 = 1012;
    /// Signal dispositions.
    pub const SIGNALS: u32 = 1013;

    /// The name of a step code.
    pub fn name(code: u32, plan: &[crate::plan::Step]) -> String {
        match code {
            PDEATHSIG => "pdeathsig".into(),
            CGROUP => "join-cgroup".into(),
            CGROUP_NS => "cgroup-namespace".into(),
            NETNS => "network-namespace".into(),
            HOSTNAME => "hostname".into(),
            CHDIR => "chdir".into(),
            FDS => "descriptors".into(),
            RLIMIT => "rlimit".into(),
            CAPS => "drop-capabilities".into(),
            IDS => "set-ids".into(),
            NO_NEW_PRIVS => "no-new-privs".into(),
            SECCOMP => "seccomp".into(),
            EXEC => "exec".into(),
            SIGNALS => "signals".into(),
            i => plan
                .get(i as usize)
                .map_or_else(|| format!("step {i}"), |s| format!("{} (#{i})", s.name())),
        }
    }
}

/// Timestamps the child leaves for the parent (monotonic ns).
#[derive(Debug, Default)]
pub struct Stamps {
    /// The child started running.
    pub started: AtomicU64,
    /// Mounts done and pivoted.
    pub mounted: AtomicU64,
    /// About to execve.
    pub exec: AtomicU64,
}

/// Everything the child needs, prepared by the parent.
pub struct ChildArgs<'a> {
    pub plan: &'a [Step],
    pub cgroup_procs: &'a [RawFd],
    pub netns: Option<RawFd>,
    pub hostname: &'a CStr,
    pub cwd: &'a CStr,
    pub program: &'a CStr,
    /// NULL-terminated.
    pub argv: &'a [*const c_char],
    /// NULL-terminated.
    pub envp: &'a [*const c_char],
    pub rlimits: &'a [(libc::__rlimit_resource_t, u64)],
    pub uid: u32,
    pub gid: u32,
    pub cap_last: u32,
    pub filter: &'a libc::sock_fprog,
    /// (source fd in the parent's table, target fd number).
    pub fds: &'a [(RawFd, RawFd)],
    pub err_pipe: RawFd,
    pub stamps: &'a Stamps,
}

pub fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Entry point given to `clone`.
///
/// Only for `clone` with `CLONE_VM | CLONE_VFORK` and `arg` pointing to a live
/// [`ChildArgs`]: the parent is suspended until this function execs or exits, so the
/// arguments stay live.
pub extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` the spawner passed to clone, see above.
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    a.stamps.started.store(now_ns(), Ordering::Relaxed);
    let (step, err) = match run(a) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let errno = err.raw_os_error().unwrap_or(0);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a stack buffer to our pipe, then exiting without running any atexit
    // handler of the (shared) parent image.
    unsafe {
        libc::write(a.err_pipe, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

enum Never {}

fn at(step: u32) -> impl Fn(io::Error) -> (u32, io::Error) {
    move |e| (step, e)
}

fn run(a: &ChildArgs<'_>) -> Result<Never, (u32, io::Error)> {
    use code::*;
    // SAFETY: raw system calls on values prepared by the parent; every pointer comes from a
    // CStr or slice in `a`, which outlives the call (the parent is suspended until exec).
    unsafe {
        // Default dispositions for what the daemon ignores (the Rust runtime ignores SIGPIPE);
        // the mask is inherited across exec, so clear it too.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        check(libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) as _).map_err(at(SIGNALS))?;

        // Join the cgroup ("0" is the writer itself), then root a cgroup namespace there.
        for fd in a.cgroup_procs {
            check(libc::write(*fd, b"0".as_ptr().cast(), 1) as _).map_err(at(CGROUP))?;
        }
        check(libc::unshare(libc::CLONE_NEWCGROUP) as _).map_err(at(CGROUP_NS))?;
        if let Some(ns) = a.netns {
            check(libc::setns(ns, libc::CLONE_NEWNET) as _).map_err(at(NETNS))?;
        }

        libc::umask(0o022);
        for (i, step) in a.plan.iter().enumerate() {
            kernel::apply(&LinuxKernel, step).map_err(at(i as u32))?;
        }
        a.stamps.mounted.store(now_ns(), Ordering::Relaxed);

        let host = a.hostname.to_bytes();
        check(libc::sethostname(host.as_ptr().cast(), host.len()) as _).map_err(at(HOSTNAME))?;
        check(libc::chdir(a.cwd.as_ptr()) as _).map_err(at(CHDIR))?;

        // Descriptors: move every source out of the way (close-on-exec copies above all
        // targets), mark everything from 3 up close-on-exec, then put each in place. dup2
        // clears close-on-exec on the target.
        let mut moved = [-1 as RawFd; 16];
        for (i, (src, _)) in a.fds.iter().enumerate().take(moved.len()) {
            let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 64);
            check(fd as _).map_err(at(FDS))?;
            moved[i] = fd;
        }
        check(libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ))
        .map_err(at(FDS))?;
        for (i, (_, target)) in a.fds.iter().enumerate().take(moved.len()) {
            check(libc::dup2(moved[i], *target) as _).map_err(at(FDS))?;
        }

        for (res, value) in a.rlimits {
            let lim = libc::rlimit {
                rlim_cur: *value,
                rlim_max: *value,
            };
            check(libc::setrlimit(*res, &lim) as _).map_err(at(RLIMIT))?;
        }

        // Capabilities: empty the bounding and ambient sets while still privileged, then
        // switch ids (which clears permitted and effective), then clear inheritable.
        for cap in 0..=a.cap_last {
            check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) as _).map_err(at(CAPS))?;
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) as _)
        .map_err(at(CAPS))?;
        check(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())).map_err(at(IDS))?;
        check(libc::syscall(libc::SYS_setresgid, a.gid, a.gid, a.gid)).map_err(at(IDS))?;
        check(libc::syscall(libc::SYS_setresuid, a.uid, a.uid, a.uid)).map_err(at(IDS))?;
        // Die with the spawner thread rather than outlive the daemon. Set after the id switch:
        // a credential change clears the parent-death signal.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as _).map_err(at(PDEATHSIG))?;
        let mut header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr())).map_err(at(CAPS))?;

        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _).map_err(at(NO_NEW_PRIVS))?;
        check(libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            a.filter as *const libc::sock_fprog,
        ) as _)
        .map_err(at(SECCOMP))?;

        a.stamps.exec.store(now_ns(), Ordering::Relaxed);
        libc::execve(a.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        Err((EXEC, io::Error::last_os_error()))
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
