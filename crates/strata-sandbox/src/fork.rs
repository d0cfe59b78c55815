//! Fork servers: a sandbox whose process forks further sandboxes from its own state. A
//! function template (SOCK's one-to-one template) is one: a sandbox of the function that has
//! imported the handler and forks instances that skip the import.
//!
//! The fork server is an ordinary sandbox (from scratch or from a runtime template) under the
//! [`SeccompMode::Forker`] filter, with a `SOCK_SEQPACKET` socket at fd 3. After loading
//! whatever it loads (as the sandbox's unprivileged user) it announces itself with one
//! datagram (its content is the caller's business, see [`Backend::start_fork_server`]) and
//! moves into a user namespace of its own, mapping the sandbox's uid and gid to themselves.
//! There it has capabilities over the namespaces it creates and over nothing it already has
//! (its root, cgroup, network: all owned by the host's user namespace).
//!
//! Per sandbox the backend takes a cgroup with the spec's limits and sends a request: a JSON
//! object with `id` (echoed), `argv`, `cwd`, `hostname`, `tmp` (tmpfs options of /tmp),
//! `netns` (a network namespace of its own, loopback only), `rlimits`, `cap_last`, `seccomp`
//! (the strict program as hex) and `targets`; the descriptors (`SCM_RIGHTS`): a "go" pipe's
//! read end, a report pipe's write end, a status pipe's write end, then one per target. The
//! server:
//!
//! 1. forks the new process with `clone(CLONE_NEWPID | NEWNS | NEWIPC | NEWUTS [| NEWNET])`,
//!    so it is pid 1 of its own namespaces, all owned by the server's user namespace;
//! 2. answers `{"id", "pid", "fork_us"}` with a pidfd of the process (or `{"id", "error",
//!    "errno"}`); the backend reads the process's host pid from the pidfd, writes it to the
//!    cgroup's `cgroup.procs` files, and writes "1" to the go pipe;
//! 3. the new process, once released, makes its own cgroup namespace, mounts a fresh /tmp
//!    (over the server's) and /proc, brings loopback up, sets hostname, working directory,
//!    descriptors and rlimits, empties its bounding, ambient and effective capability sets
//!    and locks the securebits, stacks the strict seccomp filter (`no_new_privs` is set
//!    already) and reports "ok <mounts µs> <privileges µs>" or "step:errno" on the report pipe;
//! 4. as the init of the pid namespace its children live in below their own, the server
//!    reaps them and writes each one's wait status (4 bytes) to its status pipe: the daemon
//!    is not their parent, so the [`Sandbox`] waits on that pipe instead of `waitid`.
//!
//! **Prepared spares.** The server forks its next process ahead (up to its /tmp, /proc,
//! loopback and hostname). After each fork a backend thread asks for it with
//! `{"id", "op": "spare", "tmp", "netns", "hostname"}`: the server reserves it for the request
//! that names this id and answers with its pidfd; the backend checks it as in step 2, takes a
//! cgroup with the limits of the sandbox just forked, moves it there and sends
//! `{"id", "op": "moved", "spare"}`, on which the process makes its cgroup namespace. The next
//! spawn with the same limits and shape sends its request with `"spare": <that id>`, skips the
//! cgroup and the move, and writes no go: the process goes on as soon as it has its
//! descriptors. A request naming a spare the server no longer has gets an error (never another
//! process); a prepared spare that does not fit the next spawn, or whose server goes, is
//! killed and its cgroup removed.
//!
//! What a forked sandbox shares with its siblings, beyond what a templated one shares: the
//! server's memory image (the function's own code and data as loaded, copy-on-write), its
//! environment (the function's), its root filesystem and code, and the user namespace (one
//! per server, uid and gid mapped to the same host ids every sandbox runs as). When the
//! server ends, the kernel kills every sandbox it forked: a [`Sandbox`] keeps its server
//! alive.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Inner, rlimits};
use crate::error::{Result, SandboxError};
use crate::sandbox::Sandbox;
use crate::sandbox::poll_in;
use crate::spec::{FdMapping, NetworkMode, SandboxSpec, SeccompMode, SpawnTimings};
use crate::template::{Template, hex_encode, recv, seccomp_bytes, send_with_fds, seqpacket_pair, set_recv_timeout};

/// How long after a fork the backend asks for the next spare.
const PREPARE_DELAY: Duration = Duration::from_millis(25);

/// How long a forked sandbox may take to set itself up once released.
pub(crate) const SETUP_LIMIT: Duration = Duration::from_secs(10);

/// A running fork server. Dropping the last reference stops it, and with it every sandbox it
/// forked (each holds a reference).
pub struct ForkServer {
    name: String,
    sandbox: Mutex<Sandbox>,
    /// The server's own limits (its memory limit may be raised, see
    /// [`ForkServer::set_memory_limit`]).
    limits: Mutex<crate::spec::Limits>,
    sock: Mutex<OwnedFd>,
    seq: std::sync::atomic::AtomicU64,
    /// The server's spare, already in a cgroup of its own (see [`Ready`]).
    ready: Mutex<Option<Ready>>,
    /// A thread is preparing the next [`Ready`] spare.
    preparing: std::sync::atomic::AtomicBool,
    /// Held by a spawn from taking the prepared spare until its request naming it is
    /// answered, and by the preparing thread around its "spare" op: that op drops a
    /// reservation the server still holds, so it must never come between a spawn taking the
    /// spare and its request naming it (seen as "the prepared instance is gone" under load).
    gate: Mutex<()>,
    /// Sandboxes that were a prepared spare.
    spares_used: std::sync::atomic::AtomicU64,
}

/// An instance the server forked ahead of its request and the backend already moved into a
/// cgroup of its own, with the limits the next sandbox will have: a spawn that finds one
/// skips taking a cgroup and moving the process (the slowest and most variable steps of a
/// fork here), and only sends the request and releases it. Dropped unused, it is killed and
/// its cgroup removed.
struct Ready {
    inner: Arc<Inner>,
    /// The id of the request that reserved it (a request naming it gets it).
    id: u64,
    pid: i32,
    pidfd: OwnedFd,
    cgroup: Option<crate::cgroup::Cgroup>,
    limits: crate::spec::Limits,
    /// What it was made for (`shape` of the spec).
    shape: serde_json::Value,
}

impl Drop for Ready {
    /// Unused (its cgroup still here): kill it and give the cgroup back.
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            empty_and_remove(&self.inner, cgroup, Some(&self.pidfd));
        }
    }
}

/// Kill what is in `cgroup` (first the process of `pidfd`, waiting a moment for it to exit:
/// a group with a process in it cannot be removed) and remove it.
fn empty_and_remove(inner: &Inner, cgroup: crate::cgroup::Cgroup, pidfd: Option<&OwnedFd>) {
    if let Some(fd) = pidfd {
        kill_pidfd(fd);
        let _ = poll_in(fd, 2_000);
    }
    cgroup.kill_all(inner.fs.as_ref());
    let _ = cgroup.remove(inner.fs.as_ref());
}

/// SIGKILL the process a pidfd refers to.
fn kill_pidfd(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on a pidfd we own; no memory is passed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            0usize,
            0u32,
        );
    }
}

/// What a pre-forked instance is made for: requests of the same shape can have it (the
/// runtime's fork server compares the same three fields).
fn shape(spec: &SandboxSpec) -> serde_json::Value {
    serde_json::json!({
        "tmp": crate::plan::tmp_options(spec),
        "netns": spec.network == NetworkMode::None,
        "hostname": spec.hostname,
    })
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer").field("name", &self.name).finish()
    }
}

impl ForkServer {
    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the server's process is still running.
    pub fn is_alive(&self) -> bool {
        self.sandbox
            .lock()
            .map(|mut s| matches!(s.try_wait(), Ok(None)))
            .unwrap_or(false)
    }

    /// Stop the server (and every sandbox it forked).
    pub fn kill(&self) {
        if let Ok(s) = self.sandbox.lock() {
            s.kill();
        }
    }

    /// The server's host pid.
    pub fn pid(&self) -> i32 {
        self.sandbox.lock().map(|s| s.pid()).unwrap_or(0)
    }

    /// Whether a spare is ready in its cgroup for the next spawn.
    pub fn spare_ready(&self) -> bool {
        self.ready.lock().map(|r| r.is_some()).unwrap_or(false)
    }

    /// How many sandboxes were a spare prepared ahead (no cgroup taken or moved into on their
    /// path).
    pub fn spares_used(&self) -> u64 {
        self.spares_used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The server's own resource usage (its cgroup: what it loaded, shared copy-on-write).
    pub fn usage(&self) -> crate::spec::Usage {
        self.sandbox.lock().map(|s| s.usage()).unwrap_or_default()
    }

    /// Change the server's memory limit. What a forked sandbox's kernel allocates before it
    /// is moved into its own cgroup (page tables copied at the fork, its namespaces, its
    /// /tmp's superblock) stays charged to the server's cgroup while the sandbox lives, so a
    /// server that forks many needs room beyond what its own code was allowed at load.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        let sandbox = self.sandbox.lock().expect("fork server sandbox lock");
        let mut limits = self.limits.lock().expect("fork server limits lock");
        sandbox.set_memory_limit(&limits, bytes)?;
        limits.memory_bytes = bytes;
        Ok(())
    }
}

impl ForkServer {
    /// Send request `id` with `fds`, wait for its answer: the pidfd it carries, or the
    /// server's error. An answer out of step, or none, stops the server: it can no longer be
    /// trusted (its forked sandboxes die with it).
    fn exchange(&self, id: u64, request: &[u8], fds: &[RawFd]) -> Result<OwnedFd> {
        match self.exchange_any(id, request, fds)? {
            (_, Some(pidfd)) => Ok(pidfd),
            (v, None) => {
                let message = v["error"].as_str().unwrap_or("no pidfd in the answer");
                Err(fork_err(format!("fork server {}: {message}", self.name)))
            }
        }
    }

    /// [`ForkServer::exchange`] for any answer: the answer and the descriptor it carried.
    fn exchange_any(&self, id: u64, request: &[u8], fds: &[RawFd]) -> Result<(serde_json::Value, Option<OwnedFd>)> {
        let answer = {
            let sock = self.sock.lock().expect("fork server socket lock");
            send_with_fds(sock.as_raw_fd(), request, fds).and_then(|()| recv_with_fd(sock.as_raw_fd()))
        };
        let parsed = answer.map_err(|e| e.to_string()).and_then(|(a, fd)| {
            let v: serde_json::Value = serde_json::from_slice(&a).map_err(|e| format!("bad answer: {e}"))?;
            if v["id"].as_u64() != Some(id) {
                return Err(format!("answer {} to request {id}: out of step", v["id"]));
            }
            Ok((v, fd))
        });
        match parsed {
            Ok(answer) => Ok(answer),
            Err(e) => {
                self.kill();
                Err(fork_err(format!("fork server {}: {e}", self.name)))
            }
        }
    }
}

/// Move process `pid` into `cgroup` through its open `cgroup.procs` files.
fn move_into(inner: &Inner, cgroup: &crate::cgroup::Cgroup, procs: &[OwnedFd], pid: i32) -> Result<()> {
    // cgroup v1: the memory the process has charged so far (its copy-on-write faults while
    // it set itself up in the server's group) moves along with it, instead of staying on the
    // server's account for as long as the process lives.
    for procs_file in cgroup.procs_files() {
        // (Only the v1 memory hierarchy has the file; elsewhere the write just fails.)
        if let Some(dir) = procs_file.parent() {
            let _ = inner.fs.write(&dir.join("memory.move_charge_at_immigrate"), "1");
        }
    }
    let line = pid.to_string();
    for procs_file in procs {
        // SAFETY: writing a short buffer to a descriptor we own.
        let n = unsafe { libc::write(procs_file.as_raw_fd(), line.as_ptr().cast(), line.len()) };
        if n < 0 {
            return Err(SandboxError::sys("move a forked sandbox into its cgroup"));
        }
    }
    Ok(())
}

fn fork_err(msg: impl Into<String>) -> SandboxError {
    SandboxError::Template(msg.into())
}

/// A pipe, both ends close-on-exec: (read, write).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(SandboxError::sys("pipe2"));
    }
    // SAFETY: as above.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Receive one datagram and at most one descriptor.
pub(crate) fn recv_with_fd(sock: RawFd) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    recv_with_fd_flags(sock, 0)
}

/// [`recv_with_fd`] with `flags` (`MSG_DONTWAIT`: an error rather than a wait).
pub(crate) fn recv_with_fd_flags(sock: RawFd, flags: libc::c_int) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; its pointers point into live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: as above; MSG_CMSG_CLOEXEC marks received descriptors close-on-exec.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut fd = None;
        // SAFETY: walking the control messages the kernel wrote into our buffer.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        let got = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                        if fd.is_none() {
                            fd = Some(got);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        buf.truncate(n as usize);
        return Ok((buf, fd));
    }
}

/// The host pid of the process a pidfd refers to (from `/proc/self/fdinfo`), checked to be
/// what a fork server may hand over: its own child, and pid 1 of a namespace of its own.
/// The server runs function code, so its word is not taken for which process to move into a
/// cgroup.
fn pid_of(pidfd: &OwnedFd, server: i32) -> Result<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).map_err(|source| {
        SandboxError::Sys {
            op: "read a pidfd's fdinfo",
            source,
        }
    })?;
    let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    let pid = field("Pid:")
        .and_then(|p| p.parse::<i32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| fork_err("the forked process has no pid in this namespace"))?;
    let nspid: Vec<&str> = field("NSpid:").unwrap_or("").split_whitespace().collect();
    if nspid.len() < 3 || nspid.last() != Some(&"1") {
        return Err(fork_err(format!(
            "the fork server handed over process {pid}, which does not lead a pid namespace below it (NSpid {nspid:?})"
        )));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse::<i32>().ok());
    if ppid != Some(server) {
        return Err(fork_err(format!(
            "the fork server handed over process {pid}, which is not its child"
        )));
    }
    Ok(pid)
}

/// Wait up to `limit` for one short message on a pipe ("" at end of file).
pub(crate) fn read_report(fd: &OwnedFd, limit: Duration) -> std::io::Result<String> {
    if !poll_in(fd, limit.as_millis().min(i32::MAX as u128) as i32)? {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: reading into a buffer we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

/// A sandbox's setup report: "ok <mounts µs> <privileges µs>" gives the two times;
/// "step:errno[:detail]" the step that failed ("" at end of file: it died first).
pub(crate) fn parse_report(report: &str) -> Result<(Duration, Duration)> {
    if let Some(times) = report.strip_prefix("ok ") {
        let mut it = times.split_whitespace().map(|t| t.parse::<u64>().unwrap_or(0));
        return Ok((
            Duration::from_micros(it.next().unwrap_or(0)),
            Duration::from_micros(it.next().unwrap_or(0)),
        ));
    }
    let (step, rest) = report.split_once(':').unwrap_or(("setup", ""));
    let (errno, detail) = rest.split_once(':').unwrap_or((rest, ""));
    match errno.parse::<i32>() {
        Ok(errno) if errno > 0 => Err(SandboxError::Setup {
            step: step.to_owned(),
            source: std::io::Error::from_raw_os_error(errno),
        }),
        _ if report.is_empty() => Err(fork_err("the sandbox's process died during its setup")),
        _ if !detail.is_empty() => Err(fork_err(format!("sandbox setup failed: {step}: {detail}"))),
        _ => Err(fork_err(format!("sandbox setup failed: {report:?}"))),
    }
}

impl Backend {
    /// Start a fork server: `spec` run as a sandbox (forked from `via` when given, else from
    /// scratch) under the [`SeccompMode::Forker`] filter, with the control socket at fd 3.
    /// Blocks until the server's first datagram (returned, parsed as JSON) or `startup`.
    pub fn start_fork_server(
        &self,
        name: &str,
        via: Option<&Arc<Template>>,
        mut spec: SandboxSpec,
        startup: Duration,
    ) -> Result<(ForkServer, serde_json::Value)> {
        let (ours, theirs) = seqpacket_pair()?;
        spec.fds.retain(|m| m.target != 3);
        spec.fds.push(FdMapping { fd: theirs, target: 3 });
        spec.seccomp = SeccompMode::Forker;
        let limits = spec.limits.clone();
        let sandbox = match via {
            Some(t) => self.spawn_from_template(t, spec)?,
            None => self.spawn(spec)?,
        };
        set_recv_timeout(&ours, startup);
        let server = ForkServer {
            name: name.to_owned(),
            sandbox: Mutex::new(sandbox),
            limits: Mutex::new(limits),
            sock: Mutex::new(ours),
            seq: std::sync::atomic::AtomicU64::new(1),
            ready: Mutex::new(None),
            preparing: std::sync::atomic::AtomicBool::new(false),
            gate: Mutex::new(()),
            spares_used: std::sync::atomic::AtomicU64::new(0),
        };
        let hello = recv(server.sock.lock().expect("sock lock").as_raw_fd())
            .map_err(|e| fork_err(format!("fork server {name} did not start: {e}")))?;
        let v =
            serde_json::from_slice(&hello).map_err(|e| fork_err(format!("fork server {name}: bad greeting: {e}")))?;
        Ok((server, v))
    }

    /// Fork a sandbox from a fork server: its own cgroup with the spec's limits, its own pid,
    /// mount, IPC, UTS and (unless the spec asks for the host's) network namespaces, /tmp and
    /// /proc, no capabilities, the spec's seccomp filter. The program, root, code and
    /// environment are the server's (`spec.program`/`spec.args` only choose what the server
    /// runs, see the runtime's fork server).
    ///
    /// When the server has a [`Ready`] spare for the same limits, the sandbox is that process
    /// (already in its cgroup); after a fork, a thread prepares the next one.
    pub fn spawn_from_fork_server(&self, server: &Arc<ForkServer>, mut spec: SandboxSpec) -> Result<Sandbox> {
        let inner = self.inner();
        if spec.seccomp == SeccompMode::Forker {
            return Err(SandboxError::InvalidSpec(
                "a forked sandbox gets a strict seccomp filter".into(),
            ));
        }
        if spec.fds.len() > 13 || spec.fds.iter().any(|m| !(0..64).contains(&m.target)) {
            return Err(SandboxError::InvalidSpec(
                "at most 13 descriptors, with targets below 64".into(),
            ));
        }
        let t0 = Instant::now();
        let want = shape(&spec);
        let limits = spec.limits.clone();
        // A spare that does not fit is dropped here: killed, its cgroup given back.
        let gate = server.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ready = server.ready.lock().expect("fork server spare lock").take();
        let mut reserved = ready.filter(|r| r.limits == spec.limits && r.shape == want);
        // Only a spawn naming a spare keeps the gate until its answer.
        let gate = reserved.is_some().then_some(gate);
        // The sandbox's cgroup: the spare's (which then no longer removes it when dropped),
        // else a new one.
        let (cgroup, procs) = match reserved.as_mut().and_then(|r| r.cgroup.take()) {
            Some(cgroup) => (cgroup, Vec::new()),
            None => crate::backend::take_cgroup(inner, &spec.limits)?,
        };
        let cgroup_time = t0.elapsed();
        let give_back = |inner: &Inner, cgroup: crate::cgroup::Cgroup| {
            empty_and_remove(inner, cgroup, reserved.as_ref().map(|r| &r.pidfd));
        };
        let pipes = (|| Ok::<_, SandboxError>((pipe()?, pipe()?, pipe()?)))();
        let ((go_r, go_w), (report_r, report_w), (status_r, status_w)) = match pipes {
            Ok(p) => p,
            Err(e) => {
                give_back(inner, cgroup);
                return Err(e);
            }
        };
        let mut targets: Vec<RawFd> = spec.fds.iter().map(|m| m.target).collect();
        for std_fd in 0..3 {
            if !targets.contains(&std_fd) {
                targets.push(std_fd);
            }
        }
        let id = server.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut argv = vec![spec.program.display().to_string()];
        argv.extend(spec.args.iter().skip(1).cloned());
        let req = serde_json::json!({
            "id": id,
            "argv": argv,
            "cwd": spec.cwd.display().to_string(),
            "hostname": spec.hostname,
            "tmp": crate::plan::tmp_options(&spec),
            "netns": spec.network == NetworkMode::None,
            "rlimits": rlimits(&spec),
            "cap_last": inner.cap_last(),
            "seccomp": hex_encode(&seccomp_bytes(inner.filter(spec.seccomp))),
            "targets": targets,
            "spare": reserved.as_ref().map(|r| r.id),
        });
        let request = serde_json::to_vec(&req).expect("JSON of plain values");
        let mut fds: Vec<RawFd> = vec![go_r.as_raw_fd(), report_w.as_raw_fd(), status_w.as_raw_fd()];
        fds.extend(spec.fds.iter().map(|m| m.fd.as_raw_fd()));
        for std_fd in 0..3 {
            if !spec.fds.iter().any(|m| m.target == std_fd) {
                fds.push(inner.devnull());
            }
        }
        let t_fork = Instant::now();
        let answer = server.exchange(id, &request, &fds);
        drop(gate);
        drop((go_r, report_w, status_w));
        spec.fds.clear();
        let pidfd = match answer {
            Ok(pidfd) => pidfd,
            Err(e) => {
                give_back(inner, cgroup);
                return Err(e);
            }
        };
        let fork_time = t_fork.elapsed();
        // A prepared spare was checked and moved when it was prepared, and goes on at once
        // (it may have failed its setup and exited by now, so its pid is not read again from
        // the answer): the sandbox is that process, through our own pidfd of it. The server
        // answers a request naming a spare with that spare or an error, never another one.
        let (pidfd, checked) = match reserved.as_ref().map(|r| (r.pid, r.pidfd.try_clone())) {
            Some((pid, Ok(ours))) => (ours, Some(pid)),
            Some((_, Err(_))) | None => (pidfd, None),
        };
        // From here the process exists and waits on the go pipe: on any failure, closing the
        // go pipe unwritten makes it exit, and its status arrives on the status pipe.
        let fail = |e: SandboxError, cgroup: crate::cgroup::Cgroup| {
            kill_pidfd(&pidfd);
            let _ = read_report(&status_r, SETUP_LIMIT);
            give_back(inner, cgroup);
            e
        };
        let pid = match checked {
            Some(pid) => {
                server.spares_used.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                pid
            }
            None => {
                let pid = match pid_of(&pidfd, server.pid()) {
                    Ok(p) => p,
                    Err(e) => return Err(fail(e, cgroup)),
                };
                if let Err(e) = move_into(inner, &cgroup, &procs, pid) {
                    return Err(fail(e, cgroup));
                }
                pid
            }
        };
        // A prepared spare went on as soon as it had its request; any other waits for this.
        // SAFETY: writing one byte to the go pipe we own.
        if reserved.is_none() && unsafe { libc::write(go_w.as_raw_fd(), b"1".as_ptr().cast(), 1) } != 1 {
            return Err(fail(SandboxError::sys("release a forked sandbox"), cgroup));
        }
        drop(go_w);
        let report = match read_report(&report_r, SETUP_LIMIT) {
            Ok(r) => r,
            Err(source) => {
                return Err(fail(
                    SandboxError::Sys {
                        op: "wait for a forked sandbox's setup",
                        source,
                    },
                    cgroup,
                ));
            }
        };
        let (mounts, privileges) = match parse_report(&report) {
            Ok(times) => times,
            Err(e) => return Err(fail(e, cgroup)),
        };
        let mut sandbox = Sandbox::new(Arc::clone(inner), pid, pidfd, cgroup);
        self.prepare_in_background(server, limits, want);
        sandbox.exit_pipe = Some(status_r);
        sandbox.keep = Some(Arc::clone(server) as Arc<dyn std::any::Any + Send + Sync>);
        sandbox.timings = SpawnTimings {
            cgroup: cgroup_time,
            netns: Duration::ZERO,
            namespaces: fork_time,
            mounts,
            privileges,
            exec: Duration::ZERO,
            total: t0.elapsed(),
        };
        Ok(sandbox)
    }

    /// Unless one is ready or being prepared: on a thread of its own, have the server's next
    /// spare moved into a cgroup with `limits` (a [`Ready`] spare for the next spawn).
    fn prepare_in_background(&self, server: &Arc<ForkServer>, limits: crate::spec::Limits, shape: serde_json::Value) {
        use std::sync::atomic::Ordering;
        if server.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (backend, ours) = (self.clone(), Arc::clone(server));
        let spawned = std::thread::Builder::new().name("strata-spare".into()).spawn(move || {
            let server = ours;
            // Not while the sandbox just made starts its first call: the server forks its
            // spare after a pause of its own (fntemplate.py), and asking before would make it
            // fork at once, competing with that call for the CPU.
            std::thread::sleep(PREPARE_DELAY);
            let has = server.ready.lock().map(|r| r.is_some()).unwrap_or(true);
            if !has && server.is_alive() {
                match backend.prepare_spare(&server, limits, shape) {
                    Ok(ready) => {
                        if let Ok(mut slot) = server.ready.lock() {
                            *slot = Some(ready);
                        }
                    }
                    Err(e) => tracing::debug!(server = %server.name, error = %e, "no spare prepared"),
                }
            }
            server.preparing.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            server.preparing.store(false, Ordering::Release);
        }
    }

    /// Ask the server for its spare (forked and set up ahead, reserved for the request that
    /// names it) and move it into a cgroup with `limits`.
    fn prepare_spare(
        &self,
        server: &ForkServer,
        limits: crate::spec::Limits,
        shape: serde_json::Value,
    ) -> Result<Ready> {
        let inner = self.inner();
        let id = server.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut req = shape.clone();
        req["id"] = id.into();
        req["op"] = "spare".into();
        let request = serde_json::to_vec(&req).expect("JSON of plain values");
        let pidfd = {
            let _gate = server.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if server.ready.lock().map(|r| r.is_some()).unwrap_or(true) {
                return Err(fork_err(format!(
                    "fork server {}: a spare is prepared already",
                    server.name
                )));
            }
            server.exchange(id, &request, &[])?
        };
        let pid = match pid_of(&pidfd, server.pid()) {
            Ok(pid) => pid,
            Err(e) => {
                kill_pidfd(&pidfd);
                return Err(e);
            }
        };
        let (cgroup, procs) = match crate::backend::take_cgroup(inner, &limits) {
            Ok(c) => c,
            Err(e) => {
                kill_pidfd(&pidfd);
                return Err(e);
            }
        };
        let ready = Ready {
            inner: Arc::clone(inner),
            id,
            pid,
            pidfd,
            cgroup: Some(cgroup),
            limits,
            shape,
        };
        // On failure `ready` drops: the process is killed and the cgroup removed.
        move_into(inner, ready.cgroup.as_ref().expect("just set"), &procs, pid)?;
        // Tell it: it makes its cgroup namespace now, and its request needs no go.
        let moved = server.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = serde_json::to_vec(&serde_json::json!({"id": moved, "op": "moved", "spare": id}))
            .expect("JSON of plain values");
        let (v, _) = server.exchange_any(moved, &request, &[])?;
        if v["ok"] != true {
            let message = v["error"].as_str().unwrap_or("no answer");
            return Err(fork_err(format!("fork server {}: {message}", server.name)));
        }
        Ok(ready)
    }
}
