use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_sandbox::{Backend, BindMount, ExitKind, FdMapping, Limits, NetworkMode, Sandbox, SandboxSpec};
use strata_types::{ColdPath, ColdStart, ExecMode, FunctionSpec, LogStream, Network, Runtime};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{oneshot, watch};

use crate::protocol::{self, FromInstance, ToInstance};

/// Where the host keeps what instances need besides their code.
#[derive(Debug, Clone)]
pub struct Runtimes {
    /// Folder with `python/bootstrap.py`, `node/bootstrap.js`; mounted at `/strata/runtime`.
    pub dir: PathBuf,
    /// The `strata` binary, mounted at `/strata/bin/strata` for the stdio adapter.
    pub strata_bin: PathBuf,
    /// Runtime templates to fork instances from; `None`: every instance starts from scratch.
    pub templates: Option<Arc<crate::Templates>>,
    /// Dependency layers (`requirements.txt`); `None`: functions cannot have any.
    pub layers: Option<Arc<crate::deps::Layers>>,
}

/// Receives every line a function prints: (call id if known, stream, line).
pub type LogSink = Arc<dyn Fn(Option<&str>, LogStream, String) + Send + Sync>;

/// What to launch.
#[derive(Clone)]
pub struct LaunchSpec {
    /// The function's locked spec.
    pub spec: Arc<FunctionSpec>,
    /// Version id.
    pub version: String,
    /// Host folder with the version's code.
    pub code_dir: PathBuf,
    /// Host folder of the version's dependency layer, mounted read-only at
    /// [`crate::deps::IN_SANDBOX`].
    pub deps: Option<PathBuf>,
}

/// One call.
#[derive(Debug, Clone)]
pub struct Request {
    /// Call id.
    pub id: String,
    /// HTTP method.
    pub method: String,
    /// Path after the function name.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Lowercase header names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// A handler's answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// Why an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeathReason {
    /// Killed for exceeding its memory limit.
    Oom,
    /// Exited or died on its own (description).
    Crash(String),
    /// Stopped by the platform (timeout, scale-down, shutdown).
    Stopped,
}

/// Starting an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The sandbox could not be created.
    #[error("sandbox: {0}")]
    Sandbox(#[from] strata_sandbox::SandboxError),
    /// The runtime failed to load the handler.
    #[error("{0}")]
    Init(String),
    /// Host-side I/O.
    #[error("instance setup: {0}")]
    Io(#[from] std::io::Error),
}

/// A call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// No answer within the timeout; the instance was killed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The instance was OOM-killed.
    #[error("instance ran out of memory")]
    Oom,
    /// The instance died.
    #[error("instance crashed: {0}")]
    Crash(String),
    /// The handler raised.
    #[error("handler error: {0}")]
    Function(String),
}

enum Reply {
    Ok(Response),
    Err(String),
}

struct Shared {
    id: String,
    function: String,
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    sandbox: Mutex<Option<Sandbox>>,
    death: watch::Sender<Option<DeathReason>>,
    stopping: std::sync::atomic::AtomicBool,
    log: LogSink,
    /// The last lines of stderr, for init errors.
    stderr_tail: Mutex<Vec<String>>,
    /// What it may still log (over its pipes and its log frames).
    log_budget: Mutex<LogBudget>,
    cpu_base_usec: AtomicU64,
}

/// A running instance. Dropping it kills the sandbox.
pub struct Instance {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// The control channel's read side. There is no reader task: a caller waiting for its
    /// response reads (leader/follower), dispatching other calls' frames to them, so a call
    /// costs no hand-off between tasks.
    reader: tokio::sync::Mutex<ControlReader>,
    timeout: Duration,
    cold: ColdStart,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("id", &self.shared.id).finish()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(1);

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors that we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((r, w))
}

/// Program and arguments for a runtime, as seen inside the sandbox.
fn command(spec: &FunctionSpec) -> (PathBuf, Vec<String>) {
    match (spec.runtime, spec.mode) {
        (Runtime::Python, _) => (
            "/usr/bin/python3".into(),
            // -I: ignore PYTHON* variables and the user site; -S: skip `site` (saves ~5 ms of
            // start-up; the bootstrap puts the code folder on the path itself).
            vec![
                "python3".into(),
                "-I".into(),
                "-S".into(),
                "/strata/runtime/python/bootstrap.py".into(),
            ],
        ),
        (Runtime::Node, _) => (
            "/usr/bin/node".into(),
            vec!["node".into(), "/strata/runtime/node/bootstrap.js".into()],
        ),
        (Runtime::Exec, ExecMode::Protocol) => {
            let p = format!("/code/{}", spec.handler);
            (p.clone().into(), vec![p])
        }
        (Runtime::Wasm, _) => unreachable!("wasm functions are refused before a process is planned"),
        (Runtime::Exec, ExecMode::Stdio) => (
            "/strata/bin/strata".into(),
            vec![
                "strata".into(),
                "stdio-adapter".into(),
                format!("/code/{}", spec.handler),
            ],
        ),
    }
}

/// The sandbox of a function's process (code, runtime, dependency layer, environment, limits,
/// network, hostname), without descriptors.
fn sandbox_spec(runtimes: &Runtimes, launch: &LaunchSpec, (program, args): (PathBuf, Vec<String>)) -> SandboxSpec {
    let spec = &launch.spec;
    let mut sb = SandboxSpec::new(program, args);
    sb.code = Some(launch.code_dir.clone());
    sb.cwd = "/code".into();
    sb.mounts.push(BindMount {
        source: runtimes.dir.clone(),
        target: "/strata/runtime".into(),
    });
    if spec.runtime == Runtime::Exec && spec.mode == ExecMode::Stdio {
        sb.mounts.push(BindMount {
            source: runtimes.strata_bin.clone(),
            target: "/strata/bin/strata".into(),
        });
    }
    sb.env.extend(spec.env.clone());
    // After the manifest's environment: a variable of the same name cannot unhook the layer.
    if let Some(deps) = &launch.deps {
        sb.mounts.push(BindMount {
            source: deps.clone(),
            target: crate::deps::IN_SANDBOX.into(),
        });
        let eco = if spec.runtime == Runtime::Node {
            crate::deps::Ecosystem::Node
        } else {
            crate::deps::Ecosystem::Python
        };
        let (k, v) = eco.env();
        sb.env.insert(k.into(), v);
    }
    for (k, v) in [
        ("STRATA_HANDLER", spec.handler.clone()),
        ("STRATA_CODE_DIR", "/code".into()),
        ("STRATA_CONCURRENCY", spec.concurrency.to_string()),
        ("STRATA_FUNCTION", spec.name.clone()),
        ("STRATA_VERSION", launch.version.clone()),
    ] {
        sb.env.insert(k.into(), v);
    }
    sb.limits = Limits {
        memory_bytes: spec.memory_bytes,
        cpu_millis: spec.cpu_millis,
        // 128: Node starts ~11 threads, a Python thread pool a few dozen; a fork bomb
        // still stops far below anything the host notices.
        pids: 128,
        ..Limits::default()
    };
    sb.network = match spec.network {
        Network::None => NetworkMode::None,
        Network::Host => NetworkMode::Host,
    };
    sb.netns_key = Some(format!("{}@{}", spec.name, launch.version));
    sb.hostname = spec.name.clone();
    sb
}

/// A Python function template's sandbox: the function's, running the template program, its
/// output going to the function's log.
fn template_spec(runtimes: &Runtimes, launch: &LaunchSpec, log: LogSink) -> std::io::Result<SandboxSpec> {
    let mut sb = sandbox_spec(
        runtimes,
        launch,
        (
            "/usr/bin/python3".into(),
            vec![
                "python3".into(),
                "-I".into(),
                "-S".into(),
                "/strata/runtime/python/fntemplate.py".into(),
            ],
        ),
    );
    // Its own network namespace, not one of the version's reusable ones: its instances make
    // theirs.
    sb.netns_key = None;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    sb.fds = vec![FdMapping { fd: out_w, target: 1 }, FdMapping { fd: err_w, target: 2 }];
    for (fd, stream) in [(out_r, LogStream::Stdout), (err_r, LogStream::Stderr)] {
        let log = log.clone();
        tokio::spawn(async move {
            let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                return;
            };
            let budget = Mutex::new(LogBudget::new(Instant::now()));
            let log = |stream, line| log(None, stream, line);
            let mut lines = Lines::new(rx);
            while let Some(line) = lines.next().await {
                log_within(&budget, &log, stream, line);
            }
            log_dropped(&budget, &log);
        });
    }
    Ok(sb)
}

/// Start a sandbox from the runtime template when there is one (falling back to scratch if
/// the template fails), else from scratch.
fn spawn_fresh(
    backend: &Backend,
    templates: Option<Arc<crate::Templates>>,
    sb: SandboxSpec,
) -> Result<(Sandbox, ColdPath), strata_sandbox::SandboxError> {
    match templates.and_then(|t| t.python()) {
        Some(template) => {
            // Kept to start from scratch should the template fail (not the sandbox setup).
            let fallback = sb.try_clone();
            match backend.spawn_from_template(&template, sb) {
                Err(strata_sandbox::SandboxError::Template(msg)) => {
                    tracing::warn!(error = %msg, "runtime template failed; starting from scratch");
                    let spec = fallback.map_err(|source| strata_sandbox::SandboxError::Sys {
                        op: "duplicate descriptors",
                        source,
                    })?;
                    backend.spawn(spec).map(|s| (s, ColdPath::Scratch))
                }
                r => r.map(|s| (s, ColdPath::RuntimeTemplate)),
            }
        }
        None => backend.spawn(sb).map(|s| (s, ColdPath::Scratch)),
    }
}

impl Instance {
    /// Start an instance and wait until its handler is loaded.
    pub async fn launch(
        backend: &Backend,
        runtimes: &Runtimes,
        launch: &LaunchSpec,
        log: LogSink,
    ) -> Result<Instance, LaunchError> {
        let spec = &launch.spec;
        if spec.runtime == Runtime::Wasm {
            return Err(LaunchError::Init(
                "wasm functions run on the wasm tier, not as processes".into(),
            ));
        }
        let id = format!("{}-{}", spec.name, SEQ.fetch_add(1, Ordering::Relaxed));
        let (ours, theirs) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let mut sb = sandbox_spec(runtimes, launch, command(spec));
        sb.fds = vec![
            FdMapping {
                fd: OwnedFd::from(theirs),
                target: 3,
            },
            FdMapping { fd: out_w, target: 1 },
            FdMapping { fd: err_w, target: 2 },
        ];
        let startup = Duration::from_millis(spec.timeout_ms).max(Duration::from_secs(30));
        let t0 = Instant::now();
        // A function template first (Python): the handler imported once, forked.
        let mut from_template: Option<(Duration, f64)> = None;
        let mut forked = None;
        let functions = match spec.runtime {
            Runtime::Python => runtimes.templates.as_ref().filter(|t| t.functions().is_some()),
            _ => None,
        };
        if let Some(templates) = functions {
            let fts = templates.functions().expect("checked above");
            let key = format!("{}@{}", spec.name, launch.version);
            let runtime = {
                let t = Arc::clone(templates);
                move || t.python()
            };
            let log_t = log.clone();
            let template_spec = || template_spec(runtimes, launch, log_t);
            // Room for what each instance's kernel allocates before it leaves the template's
            // group (page tables, namespaces: well under 4 MiB each here).
            let memory_after_load = spec
                .memory_bytes
                .saturating_add(u64::from(spec.max_instances.max(1)).saturating_mul(4 << 20))
                .saturating_add(32 << 20);
            match fts.get(&key, runtime, template_spec, startup, memory_after_load).await {
                crate::FunctionTemplate::InitError(message) => return Err(LaunchError::Init(message)),
                crate::FunctionTemplate::Unavailable => {}
                crate::FunctionTemplate::Ready { server, started } => {
                    if let Some((took, import_ms)) = started {
                        log(
                            None,
                            LogStream::System,
                            format!(
                                "function template started in {:.1} ms (import {import_ms:.1} ms)",
                                took.as_secs_f64() * 1000.0
                            ),
                        );
                    }
                    let fallback = sb.try_clone()?;
                    // `sb` becomes the fallback again if this fork fails; on success it is
                    // never used (an empty placeholder holding no descriptor).
                    let ours = std::mem::replace(&mut sb, SandboxSpec::new("/", Vec::new()));
                    let b = backend.clone();
                    let s = Arc::clone(&server);
                    match tokio::task::spawn_blocking(move || b.spawn_from_fork_server(&s, ours))
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?
                    {
                        Ok(sandbox) => {
                            from_template = started;
                            forked = Some(sandbox);
                            // The duplicates go now: while the instance starts, the daemon
                            // must hold no other copy of its descriptors.
                            drop(fallback);
                        }
                        Err(strata_sandbox::SandboxError::Template(msg)) => {
                            tracing::warn!(function = %spec.name, error = %msg, "function template failed; forking from the runtime template");
                            // A template that answered out of step is stopped by the sandbox
                            // crate; one that only failed this fork keeps serving the others.
                            if !server.is_alive() {
                                fts.discard(&key, &server);
                            }
                            sb = fallback;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let (sandbox, path) = match forked {
            Some(sandbox) => (sandbox, ColdPath::FunctionTemplate),
            None => {
                let backend = backend.clone();
                let templates = match spec.runtime {
                    Runtime::Python => runtimes.templates.clone(),
                    _ => None,
                };
                tokio::task::spawn_blocking(move || spawn_fresh(&backend, templates, sb))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??
            }
        };
        let timings = sandbox.timings();
        let sandbox_time = timings.total;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let sandbox_steps = strata_types::SandboxSteps {
            cgroup_ms: ms(timings.cgroup),
            netns_ms: ms(timings.netns),
            clone_ms: ms(timings.namespaces),
            mounts_ms: ms(timings.mounts),
            privileges_ms: ms(timings.privileges),
            exec_ms: ms(timings.exec),
        };
        let spawned = Instant::now();
        let pidfd = sandbox.pidfd().try_clone_to_owned()?;

        let (death, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            id,
            function: spec.name.clone(),
            pending: Mutex::new(HashMap::new()),
            sandbox: Mutex::new(Some(sandbox)),
            death,
            stopping: false.into(),
            log,
            stderr_tail: Mutex::new(Vec::new()),
            log_budget: Mutex::new(LogBudget::new(Instant::now())),
            cpu_base_usec: AtomicU64::new(0),
        });
        let stream = UnixStream::from_std(ours)?;
        let (read, write) = stream.into_split();
        tokio::spawn(output_loop(Arc::clone(&shared), out_r, LogStream::Stdout));
        tokio::spawn(output_loop(Arc::clone(&shared), err_r, LogStream::Stderr));
        tokio::spawn(exit_watch(Arc::clone(&shared), pidfd));

        let instance = Instance {
            shared: Arc::clone(&shared),
            writer: tokio::sync::Mutex::new(write),
            reader: tokio::sync::Mutex::new(protocol::FrameReader::new(read)),
            timeout: Duration::from_millis(spec.timeout_ms),
            cold: ColdStart::default(),
        };
        // Start-up gets at least 30 s (`startup`): a first import of a large library can be
        // slow even when the per-call timeout is short.
        let mut death_rx = shared.death.subscribe();
        let ready = tokio::select! {
            r = tokio::time::timeout(startup, instance.read_until_ready()) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("the instance was not ready within {startup:?}")),
            },
            r = death_rx.wait_for(Option::is_some) => {
                let reason = r.ok().and_then(|g| g.clone());
                Err(format!("the instance exited during start-up ({reason:?})"))
            }
        };
        match ready {
            Ok(import_ms) => {
                let import_ms = import_ms.unwrap_or(0.0);
                let ready_ms = spawned.elapsed().as_secs_f64() * 1000.0;
                let mut instance = instance;
                instance.cold = ColdStart {
                    path,
                    sandbox_ms: sandbox_time.as_secs_f64() * 1000.0,
                    runtime_init_ms: (ready_ms - import_ms).max(0.0),
                    import_ms,
                    launch_ms: t0.elapsed().as_secs_f64() * 1000.0,
                    sandbox_steps: Some(sandbox_steps),
                    ..ColdStart::default()
                };
                if let Some((took, template_import_ms)) = from_template {
                    // This cold start made the function template: its import is this one's.
                    instance.cold.template_ms = took.as_secs_f64() * 1000.0;
                    instance.cold.import_ms = template_import_ms;
                }
                instance
                    .shared
                    .cpu_base_usec
                    .store(instance.live_usage().0, Ordering::Relaxed);
                Ok(instance)
            }
            Err(mut message) => {
                instance.stop().await;
                // Give the output readers a moment to drain what the runtime printed.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let tail = shared.stderr_tail.lock().expect("tail lock").join("\n");
                if !tail.is_empty() && !message.contains(&tail) {
                    message = format!("{message}\n{tail}");
                }
                Err(LaunchError::Init(message))
            }
        }
    }

    /// The instance's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The cold start's breakdown.
    pub fn cold_start(&self) -> ColdStart {
        self.cold
    }

    /// Whether it has died or is being stopped.
    pub fn is_dead(&self) -> bool {
        self.shared.death.borrow().is_some() || self.shared.stopping.load(Ordering::Relaxed)
    }

    fn death_reason(&self) -> DeathReason {
        self.shared.death.borrow().clone().unwrap_or(DeathReason::Stopped)
    }

    /// Resolves when the instance is dead.
    pub async fn died(&self) -> DeathReason {
        let mut rx = self.shared.death.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
        rx.borrow().clone().unwrap_or(DeathReason::Stopped)
    }

    /// CPU time (µs) and peak memory (bytes) so far, from the cgroup files the sandbox keeps
    /// open (one `pread` each: this is on every call's path, before its response).
    fn live_usage(&self) -> (u64, u64) {
        self.shared
            .sandbox
            .lock()
            .expect("sandbox lock")
            .as_ref()
            .map(Sandbox::live_usage)
            .unwrap_or_default()
    }

    /// CPU time used since the previous call of this method (ms), and peak memory (bytes).
    pub fn take_usage(&self) -> (f64, u64) {
        let (cpu_usec, peak) = self.live_usage();
        let before = self.shared.cpu_base_usec.swap(cpu_usec, Ordering::Relaxed);
        (cpu_usec.saturating_sub(before) as f64 / 1000.0, peak)
    }

    /// Run one call.
    pub async fn invoke(&self, req: Request) -> Result<Response, InvokeError> {
        if let Some(reason) = self.shared.death.borrow().clone() {
            return Err(death_error(reason));
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .insert(req.id.clone(), tx);
        let frame = protocol::encode(
            &ToInstance::Invoke {
                id: &req.id,
                method: &req.method,
                path: &req.path,
                query: &req.query,
                headers: &req.headers,
            },
            &req.body,
        );
        let mut death_rx = self.shared.death.subscribe();
        let guard = CallGuard {
            inst: self,
            id: &req.id,
            mid_frame: std::sync::atomic::AtomicBool::new(false),
        };
        let call = async {
            {
                use tokio::io::AsyncWriteExt;
                let mut w = self.writer.lock().await;
                guard.mid_frame.store(true, Ordering::Relaxed);
                if let Err(e) = w.write_all(&frame).await {
                    // Broken, not abandoned: the exit watcher tells why.
                    guard.mid_frame.store(false, Ordering::Relaxed);
                    return Err(InvokeError::Crash(format!("control channel: {e}")));
                }
                guard.mid_frame.store(false, Ordering::Relaxed);
            }
            let mut rx = rx;
            let reply = tokio::select! {
                    biased;
                    r = &mut rx => r.ok(),
                    // The guard `wait_for` yields must not live in select's output across
                    // the awaits of the reader branch (it is not Send): drop it inside.
                    () = async { drop(death_rx.wait_for(Option::is_some).await) } => {
                        return Err(death_error(self.death_reason()));
                    }
                    mut reader = self.reader.lock() => {
                        // Only the holder of the reader dispatches, so a reply that is not
                        // here yet arrives while we read.
                        let mut got = rx.try_recv().ok();
                        while got.is_none() {
                            // Cancel-safe: a call dropped here (its client gone) leaves what it
                            // read of a frame for the next reader.
                            if !self.read_one(&mut reader).await {
                                // The channel is closed or garbled; the exit watcher says why.
                                drop(reader);
                                return Err(death_error(self.died().await));
                            }
                            got = rx.try_recv().ok();
                        }
                        got
                    }
            };
            match reply {
                Some(Reply::Ok(resp)) => Ok(resp),
                Some(Reply::Err(m)) => Err(InvokeError::Function(m)),
                None => Err(match self.shared.death.borrow().clone() {
                    Some(reason) => death_error(reason),
                    None => InvokeError::Crash("the instance dropped the call".into()),
                }),
            }
        };
        let out = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => {
                (self.shared.log)(
                    Some(&req.id),
                    LogStream::System,
                    format!(
                        "call timed out after {:?}; instance {} killed",
                        self.timeout, self.shared.id
                    ),
                );
                self.kill();
                // Killed already, whatever the frame's state: the guard need not say so again.
                guard.mid_frame.store(false, Ordering::Relaxed);
                Err(InvokeError::Timeout(self.timeout))
            }
        };
        drop(guard);
        out
    }

    /// SIGKILL the sandbox (returns at once; the exit watcher reaps it).
    pub fn kill(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(sb) = self.shared.sandbox.lock().expect("sandbox lock").as_ref() {
            sb.kill();
        }
    }

    /// Stop the instance and wait until it is gone and torn down.
    pub async fn stop(&self) {
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.died()).await;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn death_error(reason: DeathReason) -> InvokeError {
    match reason {
        DeathReason::Oom => InvokeError::Oom,
        DeathReason::Crash(m) => InvokeError::Crash(m),
        DeathReason::Stopped => InvokeError::Crash("the instance was stopped".into()),
    }
}

type ControlReader = protocol::FrameReader<tokio::net::unix::OwnedReadHalf>;

impl Instance {
    /// Read frames until `ready` (or `init_error`), dispatching anything else.
    async fn read_until_ready(&self) -> Result<Option<f64>, String> {
        let mut reader = self.reader.lock().await;
        loop {
            match reader.next().await {
                Ok(Some((FromInstance::Ready { import_ms }, _))) => return Ok(import_ms),
                Ok(Some((FromInstance::InitError { message }, _))) => {
                    (self.shared.log)(None, LogStream::System, format!("init error: {message}"));
                    return Err(message);
                }
                Ok(Some(frame)) => dispatch(&self.shared, frame),
                Ok(None) => return Err("the instance closed its control channel before it was ready".into()),
                Err(e) => {
                    self.protocol_error(&e);
                    return Err(format!("protocol error: {e}"));
                }
            }
        }
    }

    /// Read and dispatch one frame; false when the channel is closed or garbled.
    async fn read_one(&self, reader: &mut ControlReader) -> bool {
        match reader.next().await {
            Ok(Some(frame)) => {
                dispatch(&self.shared, frame);
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.protocol_error(&e);
                false
            }
        }
    }

    fn protocol_error(&self, e: &std::io::Error) {
        (self.shared.log)(None, LogStream::System, format!("protocol error, instance killed: {e}"));
        self.kill();
    }
}

/// Hand a frame to whoever it concerns.
fn dispatch(shared: &Shared, frame: (FromInstance, bytes::Bytes)) {
    match frame {
        (FromInstance::Ready { .. }, _) => {}
        (FromInstance::InitError { message }, _) => {
            (shared.log)(None, LogStream::System, format!("init error after start: {message}"));
        }
        (FromInstance::Response { id, status, headers }, body) => {
            if let Some(tx) = shared.pending.lock().expect("pending lock").remove(&id) {
                let _ = tx.send(Reply::Ok(Response { status, headers, body }));
            }
        }
        (FromInstance::Error { id, message }, _) => {
            for line in message.lines() {
                (shared.log)(Some(&id), LogStream::Stderr, line.to_owned());
            }
            if let Some(tx) = shared.pending.lock().expect("pending lock").remove(&id) {
                let _ = tx.send(Reply::Err(message));
            }
        }
        (FromInstance::Log { id, stream, line }, _) => {
            let stream = if stream == "stderr" {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            let log = |stream, line| (shared.log)(id.as_deref(), stream, line);
            log_within(&shared.log_budget, &log, stream, line);
        }
    }
}

/// Lines written straight to fd 1/2: attributed to the call in flight when there is exactly
/// one, else to the instance.
async fn output_loop(shared: Arc<Shared>, fd: OwnedFd, stream: LogStream) {
    let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut lines = Lines::new(rx);
    while let Some(line) = lines.next().await {
        if stream == LogStream::Stderr {
            let mut tail = shared.stderr_tail.lock().expect("tail lock");
            if tail.len() >= 20 {
                tail.remove(0);
            }
            tail.push(line.clone());
        }
        let call = {
            let p = shared.pending.lock().expect("pending lock");
            if p.len() == 1 { p.keys().next().cloned() } else { None }
        };
        let log = |stream, line| (shared.log)(call.as_deref(), stream, line);
        log_within(&shared.log_budget, &log, stream, line);
    }
    log_dropped(&shared.log_budget, &|stream, line| (shared.log)(None, stream, line));
}

/// One call on an instance's control channel, until it ends however it ends: its pending
/// entry is removed, and if it was dropped (its caller gone: a client that disconnected drops
/// the handler's future) in the middle of writing its request frame, the instance is killed:
/// the next call's frame would be read as the rest of the abandoned body (one caller's
/// headers and body in another's request). (Reading is cancel-safe: `FrameReader`.)
struct CallGuard<'a> {
    inst: &'a Instance,
    id: &'a str,
    mid_frame: std::sync::atomic::AtomicBool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.inst
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id);
        if self.mid_frame.load(Ordering::Relaxed) {
            (self.inst.shared.log)(
                Some(self.id),
                LogStream::System,
                format!(
                    "call abandoned in the middle of writing its request to the instance; instance {} killed",
                    self.inst.shared.id
                ),
            );
            self.inst.kill();
        }
    }
}

/// The longest output line kept whole; a longer one is logged in pieces of this size. The
/// daemon holds a line until its newline, in its own memory, not the function's cgroup: a
/// function writing without newlines grew the daemon until the OOM killer took it.
const MAX_LINE: u64 = 16 << 10;

/// Output an instance may log, bytes a second, and in one burst, over its stdout, stderr
/// and the log frames its runtime sends (`print` in a handler): every line logged is held by
/// the daemon until the store has written it, and kept on disk. A function flooding its
/// output (200 MB in half a second, measured) grew the daemon by as much. Past the budget
/// lines are dropped and counted, and the count logged once output fits again (at most once a
/// second) and when the instance's output ends.
const LOG_RATE: f64 = (1 << 20) as f64;
const LOG_BURST: f64 = (8 << 20) as f64;

/// An instance's output budget (a token bucket of [`LOG_RATE`] and [`LOG_BURST`]). Pure: the
/// caller gives the time.
#[derive(Debug)]
struct LogBudget {
    budget: f64,
    refilled: Instant,
    /// Lines and bytes dropped since the last count given.
    dropped: (u64, u64),
    counted: Option<Instant>,
}

impl LogBudget {
    fn new(now: Instant) -> Self {
        LogBudget {
            budget: LOG_BURST,
            refilled: now,
            dropped: (0, 0),
            counted: None,
        }
    }

    /// Whether a line of `len` bytes may be logged at `now` (`None`: drop it), and with it
    /// the count of lines and bytes dropped before it, when one is due.
    fn admit(&mut self, len: usize, now: Instant) -> Option<Option<(u64, u64)>> {
        let refill = now.saturating_duration_since(self.refilled).as_secs_f64() * LOG_RATE;
        self.budget = (self.budget + refill).min(LOG_BURST);
        self.refilled = now;
        let cost = len as f64 + 1.0;
        if self.budget < cost {
            self.dropped = (self.dropped.0 + 1, self.dropped.1 + len as u64 + 1);
            return None;
        }
        self.budget -= cost;
        // The count at most once a second: a steady flood lets a line through at each refill,
        // and a count before each would be a flood of its own.
        let due = self
            .counted
            .is_none_or(|c| now.saturating_duration_since(c) >= Duration::from_secs(1));
        if due && self.dropped.0 > 0 {
            self.counted = Some(now);
            return Some(Some(std::mem::take(&mut self.dropped)));
        }
        Some(None)
    }

    /// What was dropped and not yet counted.
    fn take_dropped(&mut self) -> Option<(u64, u64)> {
        let d = std::mem::take(&mut self.dropped);
        (d.0 > 0).then_some(d)
    }
}

/// The system line that counts dropped output.
fn dropped_line((lines, bytes): (u64, u64)) -> String {
    format!(
        "{lines} lines ({bytes} bytes) of output dropped: over {} MiB a second",
        LOG_RATE / f64::from(1 << 20)
    )
}

/// Log `line` on `stream` within `budget`, after a count of what was dropped when one is due.
fn log_within(budget: &Mutex<LogBudget>, log: &dyn Fn(LogStream, String), stream: LogStream, line: String) {
    let admitted = budget
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(line.len(), Instant::now());
    if let Some(count) = admitted {
        if let Some(d) = count {
            log(LogStream::System, dropped_line(d));
        }
        log(stream, line);
    }
}

/// Log the count of output dropped and not yet counted, if any.
fn log_dropped(budget: &Mutex<LogBudget>, log: &dyn Fn(LogStream, String)) {
    if let Some(d) = budget.lock().unwrap_or_else(|p| p.into_inner()).take_dropped() {
        log(LogStream::System, dropped_line(d));
    }
}

/// A function's output pipe read as lines of at most [`MAX_LINE`] bytes, invalid UTF-8
/// replaced (tokio's `lines()` ended at the first invalid byte: the function's later output
/// was lost, and a write to the closed pipe can kill it with SIGPIPE).
struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Lines<R> {
    fn new(r: R) -> Self {
        Lines {
            reader: BufReader::new(r),
            buf: Vec::new(),
        }
    }

    /// The next line without its line ending; `None` at the end or on a read error.
    async fn next(&mut self) -> Option<String> {
        use tokio::io::AsyncReadExt as _;
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.buf)
            .await
            .ok()?;
        if n == 0 {
            return None;
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        Some(String::from_utf8_lossy(&self.buf).into_owned())
    }
}

async fn exit_watch(shared: Arc<Shared>, pidfd: OwnedFd) {
    // SAFETY: `pidfd` is an owned descriptor that nothing else holds; it is registered once
    // and deregistered when the AsyncFd is dropped, before the descriptor is closed.
    if let Ok(fd) = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
        let _ = fd.readable().await;
    }
    let sandbox = shared.sandbox.lock().expect("sandbox lock").take();
    let stopping = shared.stopping.load(Ordering::Relaxed);
    let exit = match sandbox {
        Some(mut sb) => tokio::task::spawn_blocking(move || sb.wait().ok()).await.ok().flatten(),
        None => None,
    };
    let reason = match exit.map(|e| e.kind) {
        Some(ExitKind::Oom) => DeathReason::Oom,
        _ if stopping => DeathReason::Stopped,
        Some(ExitKind::Exited(c)) => DeathReason::Crash(format!("exited with code {c}")),
        Some(ExitKind::Signaled(s)) => DeathReason::Crash(format!("killed by signal {s}")),
        None => DeathReason::Crash("lost track of the sandbox".into()),
    };
    if reason != DeathReason::Stopped {
        (shared.log)(
            None,
            LogStream::System,
            format!("instance {} ended: {reason:?}", shared.id),
        );
    }
    tracing::debug!(instance = %shared.id, function = %shared.function, ?reason, "instance ended");
    // Publish the reason before dropping the pending calls' senders: a caller that sees its
    // reply channel closed then finds why.
    shared.death.send_replace(Some(reason));
    shared.pending.lock().expect("pending lock").clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_lines_are_capped_and_invalid_utf8_replaced() {
        let mut input = Vec::new();
        input.extend_from_slice(b"one\r\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE as usize * 2 + 5));
        input.extend_from_slice(b"\nbad \xff byte\nlast");
        let mut lines = Lines::new(&input[..]);
        assert_eq!(lines.next().await.as_deref(), Some("one"));
        // A line without a newline for 32 KiB comes in pieces, none over the cap.
        assert_eq!(lines.next().await.map(|l| l.len()), Some(MAX_LINE as usize));
        assert_eq!(lines.next().await.map(|l| l.len()), Some(MAX_LINE as usize));
        assert_eq!(lines.next().await.map(|l| l.len()), Some(5));
        // An invalid byte is replaced, and the lines after it still come.
        assert_eq!(lines.next().await.as_deref(), Some("bad \u{fffd} byte"));
        assert_eq!(lines.next().await.as_deref(), Some("last"));
        assert_eq!(lines.next().await, None);
    }

    #[test]
    fn output_past_the_budget_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(t0);
        // 12 MiB of 1 KiB lines (with their newlines) at once: the 8 MiB burst passes.
        let kept = (0..12 * 1024).filter(|_| b.admit(1023, t0).is_some()).count();
        assert_eq!(kept, 8 * 1024);
        // Half a second later the rate has refilled 512 KiB: the next line comes with the
        // count of the 4 MiB dropped.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(b.admit(1023, later), Some(Some((4 * 1024, 4 << 20))));
        // Dropped again at once, and the next count waits a second after the last one.
        let burst = (0..1024).filter(|_| b.admit(1023, later).is_some()).count();
        assert_eq!(burst, 511);
        assert_eq!(b.admit(10 << 20, later), None);
        assert_eq!(b.admit(1023, later + Duration::from_millis(900)), Some(None));
        let d = b.admit(1023, later + Duration::from_millis(1000)).expect("fits");
        assert_eq!(d, Some((513 + 1, 513 * 1024 + (10 << 20) + 1)));
        assert_eq!(b.take_dropped(), None);
    }
}
