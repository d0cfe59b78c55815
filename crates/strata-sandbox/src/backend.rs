//! The process-sandbox backend: prepares the host once, then spawns sandboxes from specs.

use std::ffi::{CString, c_char};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::cgroup::{CgroupFs, Hierarchy, RealFs};
use crate::child::{self, ChildArgs, Stamps};
use crate::error::{Result, SandboxError};
use crate::netns::NetnsPool;
use crate::plan::{self, HostLayout};
use crate::sandbox::Sandbox;
use crate::seccomp::{self, Filters};
use crate::spec::{NetworkMode, SandboxSpec, SeccompMode, SpawnTimings};

/// Host-wide settings of the backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Where the backend keeps its mount point and minimal /etc.
    pub run_dir: PathBuf,
    /// Network namespaces kept ready for `NetworkMode::None` sandboxes.
    pub netns_pool: usize,
    /// Cgroups created ahead of time (with default limits).
    pub cgroup_pool: usize,
    /// Remount the cgroup2 hierarchy with `favordynmods` (kernel 6.0+). Moving a process into
    /// a cgroup takes a global per-CPU rwsem whose write side waits for an RCU grace period:
    /// 12–18 ms per sandbox here, v1 and v2 alike. `favordynmods` keeps that lock in its
    /// slow-reader mode, so joining a cgroup takes microseconds, at the price of slightly
    /// dearer fork and exit for every process on the host. A host-wide setting.
    pub favor_dynmods: bool,
    /// Build the part of the root every sandbox shares (runtime dirs, /etc, /dev) once, in
    /// the spawner thread's own mount namespace, so each sandbox only makes its own few
    /// mounts. Off: every sandbox assembles its whole root (about 25 mount-related calls).
    pub root_template: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            run_dir: PathBuf::from("/run/strata"),
            // 4: covers a burst of cold starts on a small machine while the refill thread,
            // at ~1 ms a namespace, catches up.
            netns_pool: 4,
            // 4, like the namespace pool: a burst of cold starts takes them while the idle
            // refill catches up.
            cgroup_pool: 4,
            // On: a sandbox start is otherwise dominated by the cgroup join (see the field).
            favor_dynmods: true,
            root_template: true,
        }
    }
}

/// Spawns process sandboxes. Cheap to clone; all clones share one spawner thread.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("cgroups", &self.inner.hierarchy.version())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) hierarchy: Hierarchy,
    pub(crate) fs: Arc<dyn CgroupFs>,
    layout: HostLayout,
    pub(crate) netns: NetnsPool,
    pub(crate) cgroups: Arc<crate::cgpool::CgroupPool>,
    filters_errno: Filters,
    filters_kill: Filters,
    filters_forker: Filters,
    cap_last: u32,
    devnull: OwnedFd,
    jobs: mpsc::Sender<Job>,
    /// With a root template: the directories it has (see [`plan::on_template`]).
    template: Option<Vec<PathBuf>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The entries of the host's root the sandbox's root is assembled from.
const BASE_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"];
/// Host /etc entries carried into the sandbox's /etc when present.
const ETC_EXTRA: &[&str] = &["/etc/ssl", "/etc/ca-certificates", "/etc/alternatives"];

fn write_etc(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let files: &[(&str, String)] = &[
        (
            "passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                .into(),
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n".into()),
        ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n".into()),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n".into(),
        ),
        (
            "resolv.conf",
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
        ("hostname", "strata\n".into()),
    ];
    for (name, content) in files {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    for extra in ETC_EXTRA {
        if let Some(name) = Path::new(extra).file_name() {
            std::fs::create_dir_all(dir.join(name))?;
        }
    }
    Ok(())
}

/// Remount every cgroup2 mount with `favordynmods` (see [`BackendConfig::favor_dynmods`]).
fn favor_dynmods() {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in mi.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup2 ") {
            continue;
        }
        let (Some(mp), Some(opts)) = (left.split(' ').nth(4), left.split(' ').nth(5)) else {
            continue;
        };
        if right.contains("favordynmods") {
            continue;
        }
        let Ok(target) = CString::new(mp) else { continue };
        let mut flags = libc::MS_REMOUNT;
        for (opt, flag) in [
            ("nosuid", libc::MS_NOSUID),
            ("nodev", libc::MS_NODEV),
            ("noexec", libc::MS_NOEXEC),
            ("relatime", libc::MS_RELATIME),
            ("ro", libc::MS_RDONLY),
        ] {
            if opts.split(',').any(|o| o == opt) {
                flags |= flag;
            }
        }
        // SAFETY: mount(2) with valid NUL-terminated strings; a remount changes options only.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                c"favordynmods".as_ptr().cast(),
            )
        };
        if rc == 0 {
            tracing::info!(
                mount = mp,
                "cgroup2 remounted with favordynmods: cgroup joins no longer wait for RCU"
            );
        } else {
            tracing::warn!(mount = mp, error = %std::io::Error::last_os_error(), "favordynmods not available; sandbox starts pay an RCU grace period");
        }
    }
}

fn cap_last() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // 40 (CAP_CHECKPOINT_RESTORE) is the last capability of every kernel since 5.9.
        .unwrap_or(40)
}

impl Backend {
    /// Prepare the host: detect cgroups, create the parent group, remove groups a dead daemon
    /// left behind, write the minimal /etc, start the network-namespace pool.
    pub fn new(config: BackendConfig) -> Result<Self> {
        let hierarchy = Hierarchy::detect()?;
        Self::with_hierarchy(config, hierarchy, Arc::new(RealFs))
    }

    /// Like [`Backend::new`] with a given hierarchy and cgroup filesystem.
    pub fn with_hierarchy(config: BackendConfig, hierarchy: Hierarchy, fs: Arc<dyn CgroupFs>) -> Result<Self> {
        hierarchy.prepare(fs.as_ref())?;
        if config.favor_dynmods {
            favor_dynmods();
        }
        let swept = sweep_dead(&hierarchy, fs.as_ref());
        if swept > 0 {
            tracing::info!(swept, "removed cgroups left by a daemon that is gone");
        }
        let io = |op: &'static str| move |source| SandboxError::Sys { op, source };
        let root_dir = config.run_dir.join("root");
        let etc_dir = config.run_dir.join("etc");
        std::fs::create_dir_all(&root_dir).map_err(io("create run dir"))?;
        write_etc(&etc_dir).map_err(io("write sandbox /etc"))?;
        let layout = HostLayout {
            root_dir,
            etc_dir,
            base: plan::inspect_base(BASE_DIRS),
            etc_extra: ETC_EXTRA.iter().map(PathBuf::from).filter(|p| p.is_dir()).collect(),
        };
        let netns = NetnsPool::new(config.netns_pool).map_err(io("network namespace pool"))?;
        let devnull: OwnedFd = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(io("open /dev/null"))?
            .into();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let template_layout = config.root_template.then(|| layout.clone());
        // Sandboxes get PR_SET_PDEATHSIG, which fires when the *thread* that cloned them
        // exits; so every clone happens on this one thread, which lives as long as the process.
        std::thread::Builder::new()
            .name("strata-spawner".into())
            .spawn(move || {
                let template = template_layout.and_then(|layout| match private_template(&layout) {
                    Ok(made) => Some(made),
                    Err(e) => {
                        tracing::warn!(error = %e, "no root template; sandboxes build their whole root");
                        None
                    }
                });
                let _ = ready_tx.send(template);
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(io("start spawner thread"))?;
        let template = ready_rx.recv().map_err(|_| SandboxError::SpawnerGone)?;
        let tag = format!("{}-{}", std::process::id(), BACKEND_SEQ.fetch_add(1, Ordering::Relaxed));
        let cgroups =
            crate::cgpool::CgroupPool::new(hierarchy.clone(), Arc::clone(&fs), tag.clone(), config.cgroup_pool)
                .map_err(io("cgroup pool"))?;
        Ok(Backend {
            inner: Arc::new(Inner {
                hierarchy,
                fs,
                layout,
                netns,
                cgroups,
                filters_errno: seccomp::compile(SeccompMode::Errno)?,
                filters_kill: seccomp::compile(SeccompMode::Kill)?,
                filters_forker: seccomp::compile(SeccompMode::Forker)?,
                cap_last: cap_last(),
                devnull,
                jobs,
                template,
            }),
        })
    }

    /// "v1" or "v2".
    pub fn cgroup_version(&self) -> &'static str {
        self.inner.hierarchy.version()
    }

    /// Network namespaces ready in the pool.
    pub fn netns_ready(&self) -> usize {
        self.inner.netns.ready()
    }

    /// Start a sandbox. Blocks until the process has exec'd (or failed to).
    pub fn spawn(&self, spec: SandboxSpec) -> Result<Sandbox> {
        self.inner.on_spawner(move |inner| spawn_on_this_thread(inner, spec))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

static BACKEND_SEQ: AtomicU64 = AtomicU64::new(0);

/// Move the calling thread (the spawner) into a mount namespace of its own and build the root
/// template there, at `layout.root_dir`. Returns the directories the template has.
///
/// The namespace starts as a copy of the host's, turned into slaves: mounts the host makes
/// later still appear in it (a code folder on a newly mounted volume), and nothing done in it
/// reaches the host, so the template is invisible outside the daemon and goes away with the
/// process, however it ends. Each sandbox's `CLONE_NEWNS` copies this namespace, template
/// included, so the sandbox starts with its root already assembled.
fn private_template(layout: &HostLayout) -> std::io::Result<Vec<PathBuf>> {
    use crate::kernel::{Kernel, LinuxKernel};
    // SAFETY: unshare(CLONE_NEWNS) (which implies CLONE_FS) only changes this thread's
    // filesystem context and mount namespace; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let k = LinuxKernel;
    k.mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None)?;
    let (steps, made) = plan::template(layout).map_err(|e| std::io::Error::other(e.to_string()))?;
    let root = CString::new(layout.root_dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    for step in &steps {
        if let Err(e) = crate::kernel::apply(&k, step) {
            let _ = k.umount2(&root, libc::MNT_DETACH);
            return Err(std::io::Error::new(e.kind(), format!("{}: {e}", step.name())));
        }
    }
    // Its binds of host folders would be slaves of the host's mounts: the host's later mount
    // events must not reach the sandboxes made from it.
    k.mount(None, &root, None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    Ok(made)
}

/// Remove groups whose daemon (the pid in their name) is no longer running.
fn sweep_dead(h: &Hierarchy, fs: &dyn CgroupFs) -> usize {
    let alive = |name: &str| -> bool {
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks for existence.
        pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) } == 0
    };
    h.sweep_where(fs, |name| !alive(name))
}

fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString> {
    CString::new(s.as_ref().to_vec()).map_err(|_| SandboxError::InvalidSpec(format!("{what} contains a NUL byte")))
}

fn fprog(p: &[libc::sock_filter]) -> libc::sock_fprog {
    libc::sock_fprog {
        len: p.len() as u16,
        filter: p.as_ptr().cast_mut(),
    }
}

thread_local! {
    /// The stack a child runs on until it execs: 256 KiB is ample for the setup code, which
    /// makes no deep calls. One per thread, reused: with `CLONE_VFORK` the thread is suspended
    /// while its child runs on it, and reusing it saves mapping and faulting in a new one per
    /// spawn. It is never resized, so pointers into it stay valid for the thread's life.
    static CHILD_STACK: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 << 10]);
}

/// What the parent prepares for a sandbox, whichever way it then starts.
pub(crate) struct Prepared {
    pub(crate) t0: Instant,
    /// The child's filesystem steps.
    pub(crate) plan: Vec<plan::Step>,
    pub(crate) cgroup: crate::cgroup::Cgroup,
    /// Open `cgroup.procs` files of the group (one per v1 hierarchy).
    pub(crate) procs: Vec<OwnedFd>,
    /// The network namespace to enter (`None`: the host's).
    pub(crate) netns: Option<OwnedFd>,
    pub(crate) cgroup_time: Duration,
    pub(crate) netns_time: Duration,
}

impl Prepared {
    /// Give back what was taken when the start fails.
    pub(crate) fn abandon(self, inner: &Inner) {
        let _ = self.cgroup.remove(inner.fs.as_ref());
    }
}

/// A cgroup with `limits`, and its `cgroup.procs` files open for writing.
pub(crate) fn take_cgroup(
    inner: &Inner,
    limits: &crate::spec::Limits,
) -> Result<(crate::cgroup::Cgroup, Vec<OwnedFd>)> {
    let cgroup = inner.cgroups.take(limits)?;
    match cgroup
        .procs_files()
        .iter()
        .map(|p| File::options().write(true).open(p).map(OwnedFd::from))
        .collect::<std::io::Result<_>>()
    {
        Ok(procs) => Ok((cgroup, procs)),
        Err(source) => {
            let _ = cgroup.remove(inner.fs.as_ref());
            Err(SandboxError::Cgroup {
                op: "open",
                path: cgroup.procs_files()[0].clone(),
                source,
            })
        }
    }
}

/// Check a spec, plan its root, take a cgroup and a network namespace.
pub(crate) fn prepare(inner: &Arc<Inner>, spec: &SandboxSpec) -> Result<Prepared> {
    let t0 = Instant::now();
    if spec.uid == 0 || spec.gid == 0 {
        return Err(SandboxError::InvalidSpec("sandboxes never run as uid or gid 0".into()));
    }
    if !spec.program.is_absolute() {
        return Err(SandboxError::InvalidSpec(format!(
            "program {} is not an absolute path",
            spec.program.display()
        )));
    }
    if spec.fds.len() > 13 || spec.fds.iter().any(|m| !(0..64).contains(&m.target)) {
        return Err(SandboxError::InvalidSpec(
            "at most 13 descriptors, with targets below 64".into(),
        ));
    }
    let plan = match &inner.template {
        Some(made) => {
            let (mount_points, plan) = plan::on_template(spec, &inner.layout, made)?;
            for step in &mount_points {
                match crate::kernel::apply(&crate::kernel::LinuxKernel, step) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                        return Err(SandboxError::Sys {
                            op: "mount point in the root template",
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
            plan
        }
        None => plan::build(spec, &inner.layout)?,
    };

    let t_cg = Instant::now();
    let (cgroup, procs) = take_cgroup(inner, &spec.limits)?;
    let cgroup_time = t_cg.elapsed();

    let t_ns = Instant::now();
    let reused = spec.netns_key.as_deref().and_then(|key| inner.netns.take_used(key));
    let netns = match spec.network {
        NetworkMode::None if reused.is_some() => reused,
        NetworkMode::None => match inner.netns.take() {
            Ok((fd, _)) => Some(fd),
            Err(source) => {
                let _ = cgroup.remove(inner.fs.as_ref());
                return Err(SandboxError::Sys {
                    op: "network namespace",
                    source,
                });
            }
        },
        NetworkMode::Host => None,
    };
    Ok(Prepared {
        t0,
        plan,
        cgroup,
        procs,
        netns,
        cgroup_time,
        netns_time: t_ns.elapsed(),
    })
}

/// The rlimits every sandbox gets.
pub(crate) fn rlimits(spec: &SandboxSpec) -> [(libc::__rlimit_resource_t, u64); 3] {
    [
        (libc::RLIMIT_NOFILE, spec.limits.nofile),
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_FSIZE, spec.limits.fsize_bytes),
    ]
}

impl Inner {
    /// The seccomp program of a mode.
    pub(crate) fn filter(&self, mode: SeccompMode) -> &Filters {
        match mode {
            SeccompMode::Errno => &self.filters_errno,
            SeccompMode::Kill => &self.filters_kill,
            SeccompMode::Forker => &self.filters_forker,
        }
    }

    pub(crate) fn cap_last(&self) -> u32 {
        self.cap_last
    }

    pub(crate) fn devnull(&self) -> RawFd {
        self.devnull.as_raw_fd()
    }

    /// Run a job on the spawner thread and wait for its result.
    pub(crate) fn on_spawner<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&Arc<Inner>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let inner = Arc::clone(self);
        self.jobs
            .send(Box::new(move || {
                let result = job(&inner);
                let _ = tx.send(result);
                inner.netns.refill();
                inner.cgroups.refill();
            }))
            .map_err(|_| SandboxError::SpawnerGone)?;
        rx.recv().map_err(|_| SandboxError::SpawnerGone)?
    }
}

fn spawn_on_this_thread(inner: &Arc<Inner>, mut spec: SandboxSpec) -> Result<Sandbox> {
    // The strings first: one that cannot be a C string (a NUL) fails the spawn before
    // `prepare` has made a cgroup and taken a network namespace, which an early return here
    // would leave behind.
    let program = cstring(spec.program.as_os_str().as_bytes(), "program")?;
    let args: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Result<_>>()?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}"), "environment"))
        .collect::<Result<_>>()?;
    let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let hostname = cstring(&spec.hostname, "hostname")?;
    let cwd = cstring(spec.cwd.as_os_str().as_bytes(), "cwd")?;
    let Prepared {
        t0,
        plan,
        cgroup,
        procs,
        netns,
        cgroup_time,
        netns_time,
    } = prepare(inner, &spec)?;
    let procs_raw: Vec<RawFd> = procs.iter().map(AsRawFd::as_raw_fd).collect();

    let mut fd_pairs: Vec<(RawFd, RawFd)> = spec.fds.iter().map(|m| (m.fd.as_raw_fd(), m.target)).collect();
    for std_fd in 0..3 {
        if !fd_pairs.iter().any(|(_, t)| *t == std_fd) {
            fd_pairs.push((inner.devnull.as_raw_fd(), std_fd));
        }
    }
    let rlimits = rlimits(&spec);
    let filter = fprog(&inner.filter(spec.seccomp).program);
    let stamps = Stamps::default();
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        let _ = cgroup.remove(inner.fs.as_ref());
        return Err(SandboxError::sys("pipe2"));
    }
    // SAFETY: both fds were just created and are owned here.
    let (err_r, err_w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let args = ChildArgs {
        plan: &plan,
        cgroup_procs: &procs_raw,
        netns: netns.as_ref().map(AsRawFd::as_raw_fd),
        hostname: &hostname,
        cwd: &cwd,
        program: &program,
        argv: &argv,
        envp: &envp,
        rlimits: &rlimits,
        uid: spec.uid,
        gid: spec.gid,
        cap_last: inner.cap_last,
        filter: &filter,
        fds: &fd_pairs,
        err_pipe: err_w.as_raw_fd(),
        stamps: &stamps,
    };

    // The child runs on its own stack, this thread's `CHILD_STACK`.
    let stack_top = CHILD_STACK.with_borrow_mut(|stack| {
        // SAFETY: the stack grows down on x86_64; the top is the end of the buffer, 16-aligned.
        unsafe { stack.as_mut_ptr().add(stack.len()) as usize & !15 }
    });
    let flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_PIDFD
        | libc::SIGCHLD;
    let mut pidfd: libc::c_int = -1;
    let t_clone = child::now_ns();
    // SAFETY: `child_main` only reads `args`, which lives until after clone returns; with
    // CLONE_VFORK this thread is suspended until the child execs or exits, so the stack and
    // every borrowed buffer outlive the child's use of them.
    let pid = unsafe {
        libc::clone(
            child::child_main,
            stack_top as *mut libc::c_void,
            flags,
            (&args as *const ChildArgs<'_>).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let t_back = child::now_ns();
    if pid < 0 {
        let e = SandboxError::sys("clone");
        let _ = cgroup.remove(inner.fs.as_ref());
        return Err(e);
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(err_w);
    drop(procs);
    // Kept only to be given back at teardown, when the sandbox has a key.
    let kept_netns = match (netns, &spec.netns_key) {
        (Some(fd), Some(key)) => Some((key.clone(), fd)),
        _ => None,
    };
    let mut msg = [0u8; 8];
    // SAFETY: reading into a stack buffer from our own pipe.
    let n = unsafe { libc::read(err_r.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
    let mut sandbox = Sandbox::new(Arc::clone(inner), pid, pidfd, cgroup);
    sandbox.netns = kept_netns;
    if n == 8 {
        let step = u32::from_ne_bytes(msg[..4].try_into().expect("4 bytes"));
        let errno = i32::from_ne_bytes(msg[4..].try_into().expect("4 bytes"));
        let _ = sandbox.wait();
        return Err(SandboxError::Setup {
            step: child::code::name(step, &plan),
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    // The parent's copies of the passed descriptors are no longer needed.
    spec.fds.clear();
    let (s, m, x) = (
        stamps.started.load(Ordering::Relaxed),
        stamps.mounted.load(Ordering::Relaxed),
        stamps.exec.load(Ordering::Relaxed),
    );
    let d = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
    sandbox.timings = SpawnTimings {
        cgroup: cgroup_time,
        netns: netns_time,
        namespaces: d(t_clone, s),
        mounts: d(s, m),
        privileges: d(m, x),
        exec: d(x, t_back),
        total: t0.elapsed(),
    };
    Ok(sandbox)
}
