//! Runtime templates ("zygotes", after SOCK): a language runtime started once with its
//! bootstrap and common libraries loaded, from which sandboxes are forked instead of exec'd.
//!
//! A template is a trusted process of the platform: the runtime and the platform's own code,
//! never a function's. It runs as root, in the spawner thread's mount namespace (so it sees
//! the root template of [`crate::plan::template`]), with a `SOCK_SEQPACKET` socket at fd 3.
//! For each sandbox the backend prepares exactly what [`Backend::spawn`] prepares (root plan,
//! cgroup, network namespace, seccomp program, descriptors) and sends it over the socket,
//! the descriptors as `SCM_RIGHTS`. The template then:
//!
//! 1. makes the sandbox's first process with one `clone(CLONE_PARENT | CLONE_NEWPID |
//!    CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)`: pid 1 of new namespaces and, through
//!    `CLONE_PARENT`, a child of the daemon (of the spawner thread, which started the
//!    template), exactly like a cloned sandbox: [`Sandbox`] waits for it and reaps it the
//!    same way, and its parent-death signal follows the spawner thread;
//! 2. the sandbox then does what [`crate::child`] does before exec, in the same order:
//!    joins its cgroup and roots a cgroup namespace
//!    there; enters the network namespace; carries out the plan's steps; sets the hostname
//!    and working directory; puts the passed descriptors in place and closes every other;
//!    rlimits; empties the bounding and ambient capability sets, drops to the uid/gid, sets
//!    the parent-death signal, clears the capabilities, sets `no_new_privs` and installs the
//!    same seccomp program. Then, instead of exec, it replaces its environment and runs the
//!    requested program inside the already-loaded runtime;
//! 3. the template answers the backend with the pid as soon as the process exists (or has its
//!    request, for a spare); the sandbox reports "ok <mounts µs> <privileges µs>" or
//!    "step:errno[:detail]" straight to the backend, on a pipe the backend made and sent
//!    with the request (one hand-off less on the path than a report through the template).
//!
//! Request (one datagram): a JSON object with `id` (echoed in the answer), `steps` (the plan,
//! see [`wire_step`]), `cwd`, `hostname`, `uid`, `gid`, `rlimits`, `cap_last`, `seccomp` (the
//! program as hex, 8 bytes per instruction), `targets` (the descriptor number each passed
//! descriptor gets), `cgroups` (how many of the passed descriptors are `cgroup.procs` files,
//! sent first), `netns` (whether one network namespace descriptor follows them), `report`
//! (true: the next-to-last descriptor is the report pipe's write end). The last
//! descriptor is a memfd with the function's `argv` and `env` (JSON), read only by the new
//! process after the clone: the template itself never holds one function's data for the
//! next. Answer: `{"id": …, "pid": N, "fork_us": …}` or `{"id": …, "error": "…", "errno": N}`
//! (no process was made). The template announces itself with `{"ready": true}` once loaded.
//!
//! **Spares.** The clone of a ~15 MB interpreter is most of a templated spawn's time, so the
//! template makes step 1 ahead: at start, and 15 ms after each answer (at once, it competed
//! with the new sandbox's start for the cores), it clones the next sandbox's process, which
//! waits on a socket of its own, and announces it with `{"spare": pid}` (no `id`) and that
//! socket's other end (`SCM_RIGHTS`). The backend sends the next request, descriptors and
//! all, straight to the spare, then tells the template `{"taken": pid, "seccomp": …}` (no
//! answer; it clones the next spare, and decodes the seccomp program for it): the template
//! is not on the spawn's path. A request sent to the template while it has a spare (the
//! backend had not read the announcement yet) is forwarded to the spare, and the answer says
//! `"spare": true` (`fork_us` is then the hand-over). Either way the spare prepares and
//! carries out steps 2 and 3 exactly as a process cloned on demand does. Until its request the spare has no cgroup, network,
//! descriptors or identity of any function. While it waits it runs the request path on a
//! sample without executing it (copying now the pages a request would make it copy: these
//! copy-on-write faults were a third of its set-up), takes its own random seed, empties the
//! environment it inherited and its bounding and ambient capability sets (which narrows only
//! what an exec could regain, not what its set-up may do). The spare is our child (`CLONE_PARENT`), so
//! [`Template`] keeps the announced pids and, when the template goes, kills and reaps the one
//! never used; an answer with `"spare_gone": pid` names a spare that died before its request
//! (it is reaped then).
//!
//! What a templated sandbox shares with its siblings, beyond what every sandbox shares: the
//! template's memory image (copy-on-write; only the runtime and platform code, no function's
//! code or data), and with it the per-process secrets set at the template's start: Python's
//! string hash seed, the address layout, the stack canary and pointer guard. A function learns
//! them for every other function forked from the same template, which weakens hash-flooding
//! resistance and makes memory-corruption exploits against sibling instances easier. (Not yet
//! done: re-executing the template every N forks.)

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, Inner, prepare, rlimits};
use crate::error::{Result, SandboxError};
use crate::plan::Step;
use crate::sandbox::Sandbox;
use crate::spec::{SandboxSpec, SpawnTimings};

/// A running runtime template. Dropping it stops the process.
pub struct Template {
    name: String,
    sock: Mutex<OwnedFd>,
    child: Mutex<Child>,
    /// Request ids: every answer echoes its request's, so a late answer is never taken for
    /// the next request's.
    seq: std::sync::atomic::AtomicU64,
    /// Spares the template announced and has not handed out: our children (`CLONE_PARENT`),
    /// reaped here if they are never used.
    spares: Mutex<Vec<Spare>>,
    /// Spawns served by a spare.
    spares_used: std::sync::atomic::AtomicU64,
}

/// A spare the template announced: its pid and, when the template sent it, the spare's own
/// request socket, so a spawn can hand it the request without the template (see the module
/// docs).
struct Spare {
    pid: i32,
    sock: Option<OwnedFd>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").field("name", &self.name).finish()
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Template {
    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the template process is still running.
    pub fn is_alive(&self) -> bool {
        self.child
            .lock()
            .map(|mut c| matches!(c.try_wait(), Ok(None)))
            .unwrap_or(false)
    }

    /// Stop the template process (a later [`Template::is_alive`] says false), and its spare.
    pub fn kill(&self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.read_announcements();
        let spares = std::mem::take(&mut *self.spares.lock().expect("spares lock"));
        for Spare { pid, .. } in spares {
            // SAFETY: `pid` is our child (CLONE_PARENT), not yet reaped, so the number is still
            // its own: kill it and reap it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }

    /// Spawns served by a spare cloned ahead (for tests and stats).
    pub fn spares_used(&self) -> u64 {
        self.spares_used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pid of the spare waiting for the next request, if the template has announced one.
    pub fn spare(&self) -> Option<i32> {
        self.read_announcements();
        self.spares.lock().expect("spares lock").last().map(|s| s.pid)
    }

    /// Take in the announcements waiting on the socket (messages nobody else waits for
    /// between requests).
    fn read_announcements(&self) {
        if let Ok(sock) = self.sock.lock() {
            while let Ok((msg, fd)) = crate::fork::recv_with_fd_flags(sock.as_raw_fd(), libc::MSG_DONTWAIT) {
                if let Ok(v) = serde_json::from_slice(&msg) {
                    self.note(&v, fd);
                }
            }
        }
    }

    /// Take in a message that is not an answer: a spare's announcement (`{"spare": pid}`,
    /// with the spare's request socket). Says whether it was one.
    fn note(&self, v: &serde_json::Value, sock: Option<OwnedFd>) -> bool {
        match (v.get("id"), v["spare"].as_i64()) {
            (None, Some(pid)) => {
                self.spares
                    .lock()
                    .expect("spares lock")
                    .push(Spare { pid: pid as i32, sock });
                true
            }
            _ => false,
        }
    }

    /// The next answer on `sock`, parsed, taking in announcements that come before it.
    fn answer(&self, sock: RawFd) -> std::result::Result<serde_json::Value, String> {
        loop {
            let (msg, fd) = crate::fork::recv_with_fd(sock).map_err(|e| e.to_string())?;
            let v = serde_json::from_slice(&msg).map_err(|e| format!("bad answer: {e}"))?;
            if !self.note(&v, fd) {
                return Ok(v);
            }
        }
    }

    /// The answer named `pid`: if it was a spare, it is no longer ours to reap here.
    fn handed_out(&self, pid: i64) -> bool {
        let mut spares = self.spares.lock().expect("spares lock");
        let before = spares.len();
        spares.retain(|s| i64::from(s.pid) != pid);
        before != spares.len()
    }

    /// The newest announced spare that came with its request socket, taken out of the list
    /// (the spawn that takes it owns its pid from then on); older ones stay to be reaped.
    fn take_direct_spare(&self) -> Option<(i32, OwnedFd)> {
        self.read_announcements();
        let mut spares = self.spares.lock().expect("spares lock");
        let at = spares.iter().rposition(|s| s.sock.is_some())?;
        let Spare { pid, sock } = spares.remove(at);
        Some((pid, sock?))
    }

    /// The template process's pid (host view).
    pub fn pid(&self) -> u32 {
        self.child.lock().map(|c| c.id()).unwrap_or(0)
    }
}

fn template_err(msg: impl Into<String>) -> SandboxError {
    SandboxError::Template(msg.into())
}

/// A plan step as the template reads it.
fn wire_step(step: &Step) -> Result<serde_json::Value> {
    use serde_json::json;
    let s = |c: &std::ffi::CStr| -> Result<String> {
        c.to_str()
            .map(str::to_owned)
            .map_err(|_| SandboxError::InvalidSpec(format!("path {c:?} is not UTF-8")))
    };
    Ok(match step {
        Step::MakePrivate => json!(["private"]),
        Step::Tmpfs { target, flags, options } => json!(["tmpfs", s(target)?, flags, s(options)?]),
        Step::Mkdir { path } => json!(["mkdir", s(path)?]),
        Step::Touch { path } => json!(["touch", s(path)?]),
        Step::Symlink { target, link } => json!(["symlink", s(target)?, s(link)?]),
        Step::BindReadOnly { source, target } => json!(["bind", s(source)?, s(target)?]),
        Step::CharDevice { path, major, minor } => json!(["mknod", s(path)?, major, minor]),
        Step::Proc { target } => json!(["proc", s(target)?]),
        Step::PivotRoot { new_root } => json!(["pivot", s(new_root)?]),
        Step::RootReadOnly => json!(["rootro"]),
    })
}

/// A connected pair of close-on-exec `SOCK_SEQPACKET` sockets: (ours, theirs).
pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two-element array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(SandboxError::sys("socketpair"));
    }
    // SAFETY: both descriptors were just created and are owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Receives on `sock` give up after `limit` (a template that never answers).
pub(crate) fn set_recv_timeout(sock: &OwnedFd, limit: Duration) {
    let tv = libc::timeval {
        tv_sec: limit.as_secs() as _,
        tv_usec: limit.subsec_micros() as _,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
}

/// A seccomp program as the kernel reads it (8 bytes per instruction), for a template to load.
pub(crate) fn seccomp_bytes(filters: &crate::seccomp::Filters) -> Vec<u8> {
    filters
        .program
        .iter()
        .flat_map(|i| {
            let mut b = [0u8; 8];
            b[..2].copy_from_slice(&i.code.to_ne_bytes());
            b[2] = i.jt;
            b[3] = i.jf;
            b[4..].copy_from_slice(&i.k.to_ne_bytes());
            b
        })
        .collect()
}

/// Send one datagram with descriptors.
pub(crate) fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    // SAFETY: msghdr is plain data; every pointer set below points into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first header and
        // its data fit; CMSG_* only compute addresses inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes);
        }
    }
    // SAFETY: msg points to live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receive one datagram (the template's answers are small JSON objects); a descriptor sent
/// with it is closed.
pub(crate) fn recv(sock: RawFd) -> std::io::Result<Vec<u8>> {
    crate::fork::recv_with_fd(sock).map(|(data, _)| data)
}

impl Backend {
    /// Start a runtime template: `program args…` as root, with environment `env` only, in the
    /// spawner's mount namespace, fd 3 its end of the control socket. Returns once it has
    /// announced itself ready (or failed to within `startup`).
    pub fn start_template(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        startup: Duration,
    ) -> Result<Template> {
        let program = program.to_path_buf();
        let args = args.to_vec();
        let env = env.to_vec();
        let name = name.to_owned();
        self.inner().on_spawner(move |_| {
            let (ours, theirs) = seqpacket_pair()?;
            let theirs_raw = theirs.as_raw_fd();
            let mut cmd = std::process::Command::new(&program);
            cmd.args(&args).env_clear().envs(env).stdin(std::process::Stdio::null());
            // SAFETY: the closure only makes async-signal-safe system calls (dup2, prctl).
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || {
                    if libc::dup2(theirs_raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Die with the spawner thread, like the sandboxes.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|source| SandboxError::Sys {
                op: "start runtime template",
                source,
            })?;
            drop(theirs);
            set_recv_timeout(&ours, startup);
            let template = Template {
                name: name.clone(),
                sock: Mutex::new(ours),
                child: Mutex::new(child),
                seq: std::sync::atomic::AtomicU64::new(1),
                spares: Mutex::new(Vec::new()),
                spares_used: std::sync::atomic::AtomicU64::new(0),
            };
            let hello = recv(template.sock.lock().expect("sock lock").as_raw_fd())
                .map_err(|e| template_err(format!("template {name} did not start: {e}")))?;
            let v: serde_json::Value = serde_json::from_slice(&hello)
                .map_err(|e| template_err(format!("template {name}: bad greeting: {e}")))?;
            if v["ready"] != true {
                return Err(template_err(format!("template {name} failed to start: {v}")));
            }
            Ok(template)
        })
    }

    /// Start a sandbox from a runtime template: the same isolation, limits and accounting as
    /// [`Backend::spawn`], but the process is a fork of the template's instead of an exec of
    /// `spec.program`, which the template interprets (see the runtime's template script).
    pub fn spawn_from_template(&self, template: &Arc<Template>, spec: SandboxSpec) -> Result<Sandbox> {
        let template = Arc::clone(template);
        self.inner()
            .on_spawner(move |inner| spawn_templated(inner, &template, spec))
    }
}

fn spawn_templated(inner: &Arc<Inner>, template: &Template, mut spec: SandboxSpec) -> Result<Sandbox> {
    let prepared = prepare(inner, &spec)?;
    let request = (|| -> Result<(Vec<u8>, u64, OwnedFd, String)> {
        let steps = prepared.plan.iter().map(wire_step).collect::<Result<Vec<_>>>()?;
        let seccomp = hex_encode(&seccomp_bytes(inner.filter(spec.seccomp)));
        let mut targets: Vec<RawFd> = spec.fds.iter().map(|m| m.target).collect();
        for std_fd in 0..3 {
            if !targets.contains(&std_fd) {
                targets.push(std_fd);
            }
        }
        let utf8 = |what: &str, s: &std::ffi::OsStr| -> Result<String> {
            s.to_str()
                .map(str::to_owned)
                .ok_or_else(|| SandboxError::InvalidSpec(format!("{what} is not UTF-8")))
        };
        let id = template.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = serde_json::json!({
            "id": id,
            "steps": steps,
            "cwd": utf8("cwd", spec.cwd.as_os_str())?,
            "hostname": spec.hostname,
            "uid": spec.uid,
            "gid": spec.gid,
            "rlimits": rlimits(&spec),
            "cap_last": inner.cap_last(),
            "seccomp": &seccomp,
            "targets": targets,
            "cgroups": prepared.procs.len(),
            "netns": prepared.netns.is_some(),
            "report": true,
        });
        // The function's own data (argv, environment: often secrets) goes in a memfd that only
        // the new process reads, after the clone: the template's memory, which every later
        // sandbox starts from, never holds it.
        let mut argv = vec![utf8("program", spec.program.as_os_str())?];
        argv.extend(spec.args.iter().skip(1).cloned());
        let payload = memfd_with(
            &serde_json::to_vec(&serde_json::json!({"argv": argv, "env": spec.env})).expect("JSON of plain values"),
        )
        .map_err(|source| SandboxError::Sys {
            op: "memfd for the sandbox's environment",
            source,
        })?;
        Ok((
            serde_json::to_vec(&req).expect("JSON of plain values"),
            id,
            payload,
            seccomp,
        ))
    })();
    let (request, id, payload, seccomp, (report_r, report_w)) =
        match request.and_then(|(r, id, p, sc)| Ok((r, id, p, sc, crate::fork::pipe()?))) {
            Ok(r) => r,
            Err(e) => {
                prepared.abandon(inner);
                return Err(e);
            }
        };
    let mut fds: Vec<RawFd> = prepared.procs.iter().map(AsRawFd::as_raw_fd).collect();
    fds.extend(prepared.netns.as_ref().map(AsRawFd::as_raw_fd));
    fds.extend(spec.fds.iter().map(|m| m.fd.as_raw_fd()));
    for std_fd in 0..3 {
        if !spec.fds.iter().any(|m| m.target == std_fd) {
            fds.push(inner.devnull());
        }
    }
    fds.push(report_w.as_raw_fd());
    fds.push(payload.as_raw_fd());
    let t_request = std::time::Instant::now();
    // A spare whose socket the template sent gets the request straight from here: the
    // template (one more process to wake, on a 2-CPU machine) is off the spawn's path, and is
    // only told afterwards, so that it clones the next one.
    let direct = template.take_direct_spare().and_then(|(pid, sock)| {
        if send_with_fds(sock.as_raw_fd(), &request, &fds).is_ok() {
            return Some(pid);
        }
        // Gone before its request (killed from outside): ours to reap; the template serves
        // the request instead.
        // SAFETY: kill and reap our child (CLONE_PARENT), taken out of the spare list above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        None
    });
    let answer = match direct {
        Some(pid) => {
            let notice = serde_json::json!({"taken": pid, "seccomp": seccomp});
            let sock = template.sock.lock().expect("template socket lock");
            // A template that cannot take the notice is gone: the runtime's manager starts
            // another, and this sandbox is already on its way.
            let _ = send_with_fds(sock.as_raw_fd(), notice.to_string().as_bytes(), &[]);
            template.spares_used.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(serde_json::json!({
                "id": id,
                "pid": pid,
                "spare": true,
                "fork_us": t_request.elapsed().as_micros() as u64,
            }))
        }
        None => {
            let sock = template.sock.lock().expect("template socket lock");
            send_with_fds(sock.as_raw_fd(), &request, &fds)
                .map_err(|e| e.to_string())
                .and_then(|()| template.answer(sock.as_raw_fd()))
        }
    };
    let t_answered = std::time::Instant::now();
    drop(payload);
    // Only the sandbox's process keeps a write end: its death before a report is end of file.
    drop(report_w);
    let v = answer.and_then(|v| {
        if v["id"].as_u64() == Some(id) {
            Ok(v)
        } else {
            Err(format!("answer {} to request {id}: out of step", v["id"]))
        }
    });
    let v = match v {
        Ok(v) => {
            if let Some(gone) = v["spare_gone"].as_i64()
                && template.handed_out(gone)
            {
                // The spare died before its request (killed from outside): reap it.
                // SAFETY: waitpid on our child's pid, not yet reaped.
                unsafe { libc::waitpid(gone as i32, std::ptr::null_mut(), 0) };
            }
            if v["pid"].as_i64().is_some_and(|pid| template.handed_out(pid)) {
                template.spares_used.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            v
        }
        Err(e) => {
            // The template can no longer be trusted to answer in step: stop it (the runtime's
            // template manager starts another), and take down whatever it may have started
            // in this sandbox's cgroup before giving the group back.
            template.kill();
            prepared.cgroup.kill_all(inner.fs.as_ref());
            prepared.abandon(inner);
            return Err(template_err(format!("template {}: {e}", template.name)));
        }
    };
    let Some(pid) = v["pid"].as_i64().map(|p| p as i32) else {
        prepared.abandon(inner);
        let message = v["error"].as_str().unwrap_or("no pid in the answer").to_owned();
        let (step, _) = message.split_once(':').unwrap_or((&message, ""));
        return match v["errno"].as_i64() {
            Some(errno) if errno > 0 => Err(SandboxError::Setup {
                step: step.to_owned(),
                source: std::io::Error::from_raw_os_error(errno as i32),
            }),
            _ => Err(template_err(format!("template {}: {message}", template.name))),
        };
    };
    // SAFETY: pidfd_open with a pid and no flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = SandboxError::sys("pidfd_open");
        // SAFETY: kill and reap the pid the template just started for us (our child).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        prepared.abandon(inner);
        return Err(e);
    }
    // SAFETY: pidfd_open returned a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // The template answered as soon as the process had its request; its setup report comes
    // straight from it (one hand-off less than through the template).
    let report = crate::fork::read_report(&report_r, crate::fork::SETUP_LIMIT)
        .map_err(|source| SandboxError::Sys {
            op: "wait for a templated sandbox's setup",
            source,
        })
        .and_then(|r| crate::fork::parse_report(&r));
    tracing::debug!(
        prepare_us = (t_request - prepared.t0).as_micros() as u64,
        answer_us = t_answered.duration_since(t_request).as_micros() as u64,
        report_us = t_answered.elapsed().as_micros() as u64,
        "templated spawn"
    );
    let (mounts, privileges) = match report {
        Ok(times) => times,
        Err(e) => {
            // A failed setup exits (127), a hung one is killed; either way it is our child
            // (see the module docs): reap it before its cgroup goes (a group with a process
            // in it cannot be removed).
            // SAFETY: kill and reap our child's pid, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            prepared.abandon(inner);
            return Err(e);
        }
    };
    let micros = |k: &str| Duration::from_micros(v[k].as_u64().unwrap_or(0));
    let crate::backend::Prepared {
        t0,
        cgroup,
        netns,
        cgroup_time,
        netns_time,
        ..
    } = prepared;
    let mut sandbox = Sandbox::new(Arc::clone(inner), pid, pidfd, cgroup);
    sandbox.netns = match (netns, &spec.netns_key) {
        (Some(fd), Some(key)) => Some((key.clone(), fd)),
        _ => None,
    };
    spec.fds.clear();
    let total = t0.elapsed();
    let fork = micros("fork_us");
    sandbox.timings = SpawnTimings {
        cgroup: cgroup_time,
        netns: netns_time,
        namespaces: fork,
        mounts,
        privileges,
        exec: Duration::ZERO,
        total,
    };
    Ok(sandbox)
}

/// A sealed-size anonymous file holding `data`, read from offset 0.
fn memfd_with(data: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static name; the result is a new descriptor we own.
    let fd = unsafe { libc::memfd_create(c"strata-sandbox-env".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, data)?;
    Ok(file.into())
}

pub(crate) fn hex_encode(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_over_the_wire_as_tagged_lists() {
        let st = Step::BindReadOnly {
            source: c"/a".to_owned(),
            target: c"/r/code".to_owned(),
        };
        assert_eq!(wire_step(&st).unwrap(), serde_json::json!(["bind", "/a", "/r/code"]));
        let st = Step::Tmpfs {
            target: c"/r/tmp".to_owned(),
            flags: libc::MS_NOSUID,
            options: c"size=1".to_owned(),
        };
        assert_eq!(
            wire_step(&st).unwrap(),
            serde_json::json!(["tmpfs", "/r/tmp", libc::MS_NOSUID, "size=1"])
        );
        assert_eq!(hex_encode(&[0, 0xab, 0x10]), "00ab10");
    }
}
